// The admin page's project form: the question list starts from a preset (given by the server as
// JSON in the preset menu's data-presets) and can be edited as JSON before the project is created.
(function () {
  "use strict";
  const select = document.getElementById("preset");
  if (!select) return;
  const presets = JSON.parse(select.dataset.presets);
  const questions = document.getElementById("questions");
  function fill() {
    questions.value = JSON.stringify(presets[select.value], null, 1);
  }
  select.addEventListener("change", fill);
  fill();
})();
