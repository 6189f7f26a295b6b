// The redesign moved prices to an endpoint that was never deployed, so the widget stays empty.
(function () {
  "use strict";

  var widget = document.getElementById("price-widget");
  fetch("/api/prices/" + encodeURIComponent(widget.dataset.sku))
    .then(function (response) {
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      return response.json();
    })
    .catch(function (error) {
      console.warn("price widget: no price for " + widget.dataset.sku + ": " + error);
      widget.textContent = "Price unavailable";
    });
})();
