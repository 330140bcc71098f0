// tollgate admin UI: small progressive enhancements. Every form works without this file.
(function () {
  "use strict";

  // Copy buttons: <button data-copy="#input-id" data-copied="Copied" hidden>.
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    var target = document.querySelector(button.getAttribute("data-copy"));
    if (!target) return;
    button.hidden = false;
    var label = button.textContent;
    button.addEventListener("click", function () {
      var text = target.value || target.textContent;
      var done = function () {
        button.textContent = button.getAttribute("data-copied") || label;
        setTimeout(function () { button.textContent = label; }, 2000);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { target.select(); });
      } else {
        target.select();
        try { document.execCommand("copy"); done(); } catch (e) { /* selected for a manual copy */ }
      }
    });
  });

  // A page answering a form post (a new key's secret) says which URL it stands for, so that a
  // reload is a plain GET: it neither posts the form again nor shows the secret again.
  var replace = document.querySelector("[data-replace-url]");
  if (replace && window.history && window.history.replaceState) {
    window.history.replaceState(null, "", replace.getAttribute("data-replace-url"));
  }

  // Select a secret when it gets focus, so it is easy to copy by hand too.
  document.querySelectorAll("input[readonly]").forEach(function (input) {
    input.addEventListener("focus", function () { input.select(); });
  });

  // Read a chosen file into a textarea: <input type="file" data-fill="#textarea-id"> inside a
  // label that stays hidden without this script (the textarea takes a pasted file then).
  document.querySelectorAll("input[type=file][data-fill]").forEach(function (input) {
    var target = document.querySelector(input.getAttribute("data-fill"));
    if (!target || !window.FileReader) return;
    var label = input.closest("[data-file-label]");
    if (label) label.hidden = false;
    input.addEventListener("change", function () {
      var file = input.files && input.files[0];
      if (!file) return;
      var reader = new FileReader();
      reader.onload = function () { target.value = reader.result; };
      reader.readAsText(file);
    });
  });

  // Ask before destructive actions: <form data-confirm="Revoke this key?">.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
    });
  });
})();
