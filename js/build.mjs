// Bundle src/widget.js (+ BokehJS) into one ES module for anywidget's _esm.
// --keep-names matters: BokehJS registers models by class name, and a
// minifier that renames classes makes registrations collide.
// src/colors.js imports ../ptt_nb/palette.json (the colours Python uses too): the json loader inlines it.
import * as esbuild from "esbuild";

const opts = {
  entryPoints: ["src/widget.js"],
  bundle: true,
  format: "esm",
  minify: true,
  keepNames: true,
  target: "es2022",
  loader: { ".json": "json" },
  outfile: "../ptt_nb/static/widget.js",
  legalComments: "eof",
  logLevel: "info",
};
// --outfile=PATH: build elsewhere (tests compare that build with the committed bundle)
const out = process.argv.find((a) => a.startsWith("--outfile="));
if (out) opts.outfile = out.slice("--outfile=".length);

if (process.argv.includes("--watch")) {
  const ctx = await esbuild.context(opts);
  await ctx.watch();
} else {
  await esbuild.build(opts);
}
