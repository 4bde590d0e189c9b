// The console works without this script; it only asks before replaying every failed event
// and selects a portal link for copying.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.action.endsWith("/console/events/replay-failed") &&
      !window.confirm("Replay every failed event?")) {
    event.preventDefault();
  }
});
document.addEventListener("focusin", (event) => {
  if (event.target.classList.contains("copy")) event.target.select();
});
