// sitelink central UI: the one script of our own. Pages carry no inline
// script (the Content-Security-Policy forbids it); this file adds:
// - the session's CSRF token as X-CSRF-Token on every htmx request;
// - live parts: an element with data-refresh-ms gets the htmx event
//   "refresh" at that period, only while the tab is visible (a hidden tab
//   costs central nothing), and at once when the tab shows again;
// - copy buttons (data-copy-target="<element id>");
// - selects that submit their form on change (data-autosubmit).
(function () {
  'use strict';

  document.addEventListener('htmx:configRequest', function (e) {
    var token = document.body.dataset.csrf;
    if (token) {
      e.detail.headers['X-CSRF-Token'] = token;
    }
  });

  function tick(force) {
    if (document.visibilityState !== 'visible' || !window.htmx) {
      return;
    }
    var now = Date.now();
    document.querySelectorAll('[data-refresh-ms]').forEach(function (el) {
      var last = Number(el.dataset.lastRefresh || 0);
      if (!last) {
        // First seen (a new page, or just swapped in): wait a period.
        el.dataset.lastRefresh = String(now);
        if (!force) {
          return;
        }
      }
      if (force || now - last >= Number(el.dataset.refreshMs)) {
        el.dataset.lastRefresh = String(now);
        window.htmx.trigger(el, 'refresh');
      }
    });
  }
  setInterval(function () { tick(false); }, 500);
  document.addEventListener('visibilitychange', function () { tick(true); });

  document.addEventListener('click', function (e) {
    var button = e.target.closest('[data-copy-target]');
    if (!button) {
      return;
    }
    var source = document.getElementById(button.dataset.copyTarget);
    if (source && navigator.clipboard) {
      navigator.clipboard.writeText(source.textContent).then(function () {
        button.textContent = 'Copied';
      });
    }
  });

  document.addEventListener('change', function (e) {
    if (e.target.matches('[data-autosubmit]') && e.target.form) {
      e.target.form.requestSubmit();
    }
  });
})();
