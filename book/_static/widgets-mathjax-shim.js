/* The Jupyter widgets embedder (@jupyter-widgets/html-manager 1.x) typesets widget labels with
 * the MathJax 2 call MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]). The book loads
 * MathJax 3, which has no Hub, so every widget page threw "Cannot read properties of undefined
 * (reading 'Queue')". This maps the old call onto MathJax 3's typesetPromise. MathJax 3 replaces
 * window.MathJax when it starts, so the Hub is added to the configuration now and again once
 * MathJax is ready. Loaded on every page by tools/site_fixes.py, after the MathJax configuration.
 */
(function () {
  function addHub(mathjax) {
    if (!mathjax || mathjax.Hub) return;
    mathjax.Hub = {
      Queue: function (job) {
        var element = Array.isArray(job) ? job[2] : null;
        var mj = window.MathJax;
        if (element && mj && typeof mj.typesetPromise === "function") {
          mj.typesetPromise([element]).catch(function () {});
        }
      },
    };
  }
  var config = (window.MathJax = window.MathJax || {});
  addHub(config);
  config.startup = config.startup || {};
  var ready = config.startup.ready;
  config.startup.ready = function () {
    if (ready) ready();
    else window.MathJax.startup.defaultReady();
    addHub(window.MathJax);
  };
})();
