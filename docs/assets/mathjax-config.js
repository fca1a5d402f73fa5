// MathJax 2.7 from the PyPI package jupyter-server-mathjax, copied into site/assets/mathjax by
// docs/hooks.py: formulas render without a network. Read by MathJax.js when it loads.
window.MathJax = {
  config: ["TeX-AMS-MML_HTMLorMML-full.js"],
  tex2jax: {
    inlineMath: [["$", "$"], ["\\(", "\\)"]],
    displayMath: [["$$", "$$"], ["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  messageStyle: "none",
  // the package ships the STIX-Web fonts only (no TeX fonts): use them, never image fonts or a CDN
  "HTML-CSS": { availableFonts: ["STIX-Web"], preferredFont: "STIX-Web", webFont: "STIX-Web", imageFont: null },
};
