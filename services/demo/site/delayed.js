// Renders the quotes some time after load, like a page that waits for a slow data feed.
(function () {
  "use strict";

  var list = document.getElementById("quotes");
  var status = document.getElementById("quotes-status");
  var delayMs = Number(list.dataset.delayMs);

  function renderQuote(quote) {
    var item = document.createElement("li");
    item.className = "quote";
    var fields = [["quote-symbol", quote.symbol], ["quote-price", quote.price], ["quote-change", quote.change]];
    fields.forEach(function (field) {
      var span = document.createElement("span");
      span.className = field[0];
      span.textContent = field[1];
      item.appendChild(span);
    });
    var change = item.querySelector(".quote-change");
    change.classList.add(quote.change.charAt(0) === "-" ? "down" : "up");
    return item;
  }

  function loadQuotes() {
    fetch("/api/quotes")
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (payload) {
        payload.quotes.forEach(function (quote) {
          list.appendChild(renderQuote(quote));
        });
        // Milliseconds since navigation start, so a test can check that the delay happened.
        list.dataset.renderedAtMs = String(Math.round(performance.now()));
        status.textContent = "Updated just now.";
        console.log("quotes: rendered " + payload.quotes.length + " quotes");
      })
      .catch(function (error) {
        status.textContent = "The quote feed is unavailable.";
        console.error("quotes: loading failed: " + error);
      });
  }

  console.log("quotes: waiting " + delayMs + " ms for the quote feed");
  window.setTimeout(loadQuotes, delayMs);
})();
