// MathJax reads the \( \) and \[ \] spans pymdownx.arithmatex leaves in class "arithmatex"
window.MathJax = {
  tex: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true },
  options: { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex" },
};
