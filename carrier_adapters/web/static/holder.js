// The holder's page. Every step is a plain form; this script posts it in the background and puts
// the answer in place, so the page is never left: the page token (and with it the holder's
// session) lives only in this page, and closing the page signs the holder out. Release progress
// arrives as server-sent events. No inline script, no eval: the Content-Security-Policy allows
// this file and nothing else.
(function () {
  "use strict";

  var meta = document.querySelector('meta[name="page-token"]');
  var token = meta ? meta.getAttribute("content") : "";
  var source = null;
  var retry = null;

  function app() {
    return document.getElementById("app");
  }

  function base() {
    return app().getAttribute("data-base") || "";
  }

  // Put a rendered #app in place of the current one, then move focus where a person needs it:
  // the refusal if there is one, else the step's heading.
  function swap(html) {
    var holder = document.createElement("div");
    holder.innerHTML = html;
    var next = holder.querySelector("#app");
    if (!next) {
      return false;
    }
    app().replaceWith(next);
    document.title = next.getAttribute("data-title") || document.title;
    document.documentElement.lang = next.getAttribute("data-lang") || document.documentElement.lang;
    var focus = document.getElementById("error") || document.getElementById("step");
    if (focus) {
      focus.focus();
    }
    follow();
    return true;
  }

  // A request turned away at the door (busy) or lost on the way: say so, keep the page as it is.
  function notice(text) {
    var box = document.getElementById("notice");
    if (!box) {
      return;
    }
    box.textContent = text;
    box.hidden = false;
    box.setAttribute("tabindex", "-1");
    box.focus();
  }

  function busyText(html) {
    var holder = document.createElement("div");
    holder.innerHTML = html;
    var busy = holder.querySelector("#busy");
    return busy ? busy.textContent : "";
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || form.method.toLowerCase() !== "post") {
      return;
    }
    event.preventDefault();
    var body = new FormData(form, event.submitter || null);
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) {
      b.disabled = true;
    });
    app().setAttribute("aria-busy", "true");
    var offline = app().getAttribute("data-offline");
    fetch(form.action, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "X-Page-Token": token, "X-Fragment": "1" },
    })
      .then(function (response) {
        return response.text().then(function (html) {
          if (response.headers.get("X-Shed") === "1") {
            notice(busyText(html) || offline);
          } else if (!swap(html)) {
            notice(offline);
          }
        });
      })
      .catch(function () {
        notice(offline);
      })
      .finally(function () {
        var current = app();
        current.removeAttribute("aria-busy");
        if (document.body.contains(form)) {
          buttons.forEach(function (b) {
            b.disabled = false;
          });
        }
      });
  });

  // Live release progress: the server sends each platform's progress as it changes.
  function follow() {
    if (source) {
      source.close();
      source = null;
    }
    if (retry) {
      clearTimeout(retry);
      retry = null;
    }
    var progress = document.getElementById("progress");
    if (!progress || !progress.getAttribute("data-events")) {
      return;
    }
    var url = progress.getAttribute("data-events") + "?page=" + encodeURIComponent(token);
    source = new EventSource(url);
    source.addEventListener("progress", function (event) {
      progress.innerHTML = event.data;
    });
    source.addEventListener("done", function (event) {
      progress.innerHTML = event.data;
      progress.removeAttribute("data-events");
      source.close();
      source = null;
      var next = document.getElementById("receipt-button");
      if (next) {
        next.focus();
      }
    });
    source.onerror = function () {
      // A closed stream (busy, or the server went away) is tried again in a while; an open
      // one reconnects by itself.
      if (source && source.readyState === EventSource.CLOSED) {
        source = null;
        retry = setTimeout(follow, 5000);
      }
    };
  }

  // Closing the page signs the holder out at once (the server forgets the page's state).
  window.addEventListener("pagehide", function () {
    if (!token || !navigator.sendBeacon) {
      return;
    }
    var data = new FormData();
    data.append("page_token", token);
    navigator.sendBeacon(base() + "/signout", data);
  });

  follow();
})();
