// Infinite scroll: fetches the next posts from /api/feed when the reader nears the bottom.
(function () {
  "use strict";

  var NEAR_BOTTOM_PX = 300;
  var list = document.getElementById("feed");
  var status = document.getElementById("feed-status");
  var nextOffset = Number(list.dataset.nextOffset);
  var loading = false;

  function isNearBottom() {
    var viewportBottom = window.innerHeight + window.scrollY;
    return viewportBottom >= document.documentElement.scrollHeight - NEAR_BOTTOM_PX;
  }

  function renderItem(post) {
    var item = document.createElement("li");
    item.className = "feed-item";
    item.dataset.id = String(post.id);
    var title = document.createElement("h3");
    title.className = "feed-title";
    title.textContent = post.title;
    var date = document.createElement("time");
    date.className = "feed-date";
    date.textContent = post.date;
    var body = document.createElement("p");
    body.className = "feed-body";
    body.textContent = post.body;
    item.append(title, date, body);
    return item;
  }

  function showPage(page) {
    page.items.forEach(function (post) {
      list.appendChild(renderItem(post));
    });
    nextOffset = page.nextOffset;
    list.dataset.nextOffset = nextOffset === null ? "" : String(nextOffset);
    console.log("feed: " + list.children.length + " of " + page.total + " posts shown");
    if (nextOffset === null) {
      status.classList.add("feed-end");
      status.textContent = "You have reached the end of the journal.";
    } else {
      status.textContent = "";
    }
  }

  function loadMore() {
    if (loading || nextOffset === null) {
      return;
    }
    loading = true;
    status.textContent = "Loading more posts…";
    fetch("/api/feed?offset=" + nextOffset)
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(showPage)
      .catch(function (error) {
        status.textContent = "More posts could not be loaded.";
        console.error("feed: loading offset " + nextOffset + " failed: " + error);
      })
      .finally(function () {
        loading = false;
      });
  }

  window.addEventListener("scroll", function () {
    if (isNearBottom()) {
      loadMore();
    }
  }, { passive: true });
})();
