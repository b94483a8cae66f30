// The admin page's project form: the question list starts from a preset (given by the server as
// JSON in #question-presets) and can be edited as JSON before the project is created.
(function () {
  "use strict";
  const presets = JSON.parse(document.getElementById("question-presets").textContent);
  const select = document.getElementById("preset");
  const questions = document.getElementById("questions");
  function fill() {
    questions.value = JSON.stringify(presets[select.value], null, 1);
  }
  select.addEventListener("change", fill);
  fill();
})();
