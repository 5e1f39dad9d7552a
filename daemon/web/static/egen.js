// egen's pages work without this script; with it, times show in the viewer's own zone,
// "select all" selects, DSNs copy with one click and dates in forms mean local dates.
"use strict";
(function () {
  document.documentElement.classList.add("js");
  var pad = function (n) { return (n < 10 ? "0" : "") + n; };
  var local = function (d) {
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes());
  };
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var d = new Date(el.getAttribute("datetime"));
    if (isNaN(d.getTime())) { return; }
    var utc = el.getAttribute("title") || "";
    if (el.hasAttribute("data-local")) {
      el.textContent = local(d);
      el.setAttribute("title", utc);
    } else {
      el.setAttribute("title", local(d) + " local · " + utc);
    }
  });
  document.querySelectorAll("input[data-select-all]").forEach(function (box) {
    var name = box.getAttribute("data-select-all");
    box.addEventListener("change", function () {
      var form = box.form || document;
      form.querySelectorAll('input[type=checkbox][name="' + name + '"]').forEach(function (c) {
        c.checked = box.checked;
      });
    });
  });
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var target = document.getElementById(button.getAttribute("data-copy"));
      if (!target || !navigator.clipboard) { return; }
      navigator.clipboard.writeText(target.textContent).then(function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy"; }, 1500);
      });
    });
  });
  document.querySelectorAll('input[name="tz_offset"]').forEach(function (field) {
    field.value = String(new Date().getTimezoneOffset());
  });
})();
