// examples/convention/tallies.js: the counts as a list of bars, for both
// pages. renderTallies(ul, t): t is a tallies message ({question, options,
// counts, votes}); each <li> carries data-option and data-count.
"use strict";
function renderTallies(ul, t) {
  const most = Math.max(1, ...t.counts);
  ul.replaceChildren(...t.options.map((option, i) => {
    const li = document.createElement("li");
    li.dataset.option = option;
    li.dataset.count = t.counts[i];
    li.textContent = `${option}: ${t.counts[i]}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(12 * t.counts[i]) / most}em`;
    li.appendChild(bar);
    return li;
  }));
  ul.dataset.question = t.question;
}
