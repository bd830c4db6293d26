// BokehJS, bundled (no CDN: notebooks must work offline and on air-gapped
// clusters). bokeh.esm.min.js is the core; bokeh-api.esm.min.js registers the
// JS plotting API (Plotting.figure, model classes) onto the same object as a
// side effect, so it must be imported after the core.
import Bokeh from "@bokeh/bokehjs/build/js/bokeh.esm.min.js";
import "@bokeh/bokehjs/build/js/bokeh-api.esm.min.js";

export default Bokeh;

/**
 * Render models, one root per target element, into a fresh Document.
 * Returns a disposer that removes the views. We call the embed function
 * directly (not Plotting.show) because show() waits for document "idle",
 * which never comes for an element that is not attached to the page yet.
 */
export async function embedRoots(models, targets) {
  const doc = new Bokeh.Document();
  for (const m of models) doc.add_root(m);
  const views = await Bokeh.embed.add_document_standalone(doc, targets[0], targets);
  return { doc, dispose: () => { views.clear(); doc.clear(); } };
}
