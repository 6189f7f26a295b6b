// Shared by every page. The console line shows up in a bot's "script output" logs.
console.log("demo site: " + window.location.pathname + " loaded");
