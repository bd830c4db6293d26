// anywidget entry point. All state arrives as custom messages (never synced
// traits: those are saved into the notebook file), so a view that is
// re-rendered or re-opened just says "ready" and Python replays init + data.
import { DashboardView } from "./view.js";
import { decodeMessage } from "./decode.js";

function render({ model, el }) {
  const view = new DashboardView(el, (msg) => model.send(msg));
  const onMsg = (msg, buffers) => {
    try {
      view.push(decodeMessage(msg, buffers ?? []));
    } catch (err) {
      console.error("ptt_nb: bad message", err);
    }
  };
  model.on("msg:custom", onMsg);
  model.send({ type: "ready" });
  // Test/benchmark hook; harmless in a notebook.
  el.__ptt_view = view;
  return () => {
    model.off("msg:custom", onMsg);
    view.destroy();
  };
}

export default { render };
export { DashboardView, decodeMessage };
