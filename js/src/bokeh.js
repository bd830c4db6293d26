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

/**
 * Colour a figure for a theme (theme.js's resolved colours), in place: setv on the models makes
 * BokehJS repaint the view, so a theme switch needs no re-embed. Plot text (title, tick labels,
 * axis labels, legend) uses the theme's text colours, which are AA on `t.background`.
 */
export function applyPlotTheme(fig, t) {
  if (!fig || !t) return;
  fig.setv({ background_fill_color: t.background, border_fill_color: t.background, outline_line_color: t.border });
  fig.title?.setv({ text_color: t.text });
  for (const ax of fig.axes ?? []) {
    ax.setv({
      axis_line_color: t.text3, major_tick_line_color: t.text3, minor_tick_line_color: t.text3,
      major_label_text_color: t.text2, axis_label_text_color: t.text2,
    });
  }
  for (const g of fig.grids ?? []) g.setv({ grid_line_color: t.grid });
  const layouts = [...fig.center, ...fig.left, ...fig.right, ...fig.above, ...fig.below];
  for (const m of layouts) {
    if (m instanceof Bokeh.Legend) {
      m.setv({ background_fill_color: t.background, border_line_color: t.border, label_text_color: t.text,
        inactive_fill_color: t.background });
    } else if (m instanceof Bokeh.ColorBar) {
      m.setv({ background_fill_color: t.background, major_label_text_color: t.text2, title_text_color: t.text,
        major_tick_line_color: t.text3, bar_line_color: null });
    }
  }
}
