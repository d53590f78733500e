// Runs before the page is parsed: a key given as #key=… moves to this tab's session storage
// and leaves the address bar (and so the history) at once. Other fragment values stay.
(function () {
  'use strict';
  var params = new URLSearchParams(location.hash.slice(1));
  if (!params.has('key')) {
    return;
  }
  sessionStorage.setItem('storeface.key', params.get('key'));
  params.delete('key');
  var rest = params.toString();
  history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
})();
