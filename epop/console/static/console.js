/*
 * The relay's console page: reads the relay's state, settings, connections
 * and journal from its JSON API, keeps them live from the event stream
 * (/api/events), and sends the commands a person gives (start/stop,
 * settings, test e-PMSI, start with the machine).
 *
 * Plain ES2020, no framework, no build: the page's Content-Security-Policy
 * (default-src 'self') forbids anything inline, so every behaviour is here.
 * Every label comes from /api/texts in the chosen language (t(key)).
 */
'use strict';

(() => {
  const DEFAULT_PORT = 3358;
  const EVENT_TYPES = [
    'listening-opened', 'listening-closed', 'connection-opened', 'connection-closed',
    'object-instantiated', 'object-released', 'settings-reloaded',
  ];
  const NOTIFY_DEFAULT = ['connection-opened', 'connection-closed'];
  const JOURNAL_PAGE = 100;
  const JOURNAL_KEPT = 5000;
  const CONNECTIONS_LIMIT = 200;
  const CONNECTIONS_KEPT = 1000;
  const SEARCH_DELAY_MS = 350;
  const FLASH_MS = 600;
  const LANG_COOKIE = 'epop_lang';

  const $ = (id) => document.getElementById(id);

  const page = {
    lang: 'en',
    texts: {},
    state: null,
    csrf: '',
    interfaces: [],
    dirty: new Set(),          // settings fields the person changed and has not saved
    connections: [],           // CONNECTION rows, newest first
    selection: new Set(),      // selected connection ids ("RUN:N")
    anchor: null,              // the last clicked connection, for Shift-click ranges
    journal: [],               // RECORDs shown, newest first
    journalNext: null,
    journalQuery: 0,           // increases with each query, so a late answer is dropped
    journalTypes: new Set(EVENT_TYPES),
    notifyTypes: new Set(NOTIFY_DEFAULT),
    starting: false,
    signedOut: false,
    events: null,
  };

  // Texts and language

  function t(key) {
    const text = page.texts[key];
    return typeof text === 'string' ? text : key;
  }

  function typeName(type) {
    return EVENT_TYPES.includes(type) ? t(`type-${type}`) : String(type);
  }

  function readCookie(name) {
    for (const part of document.cookie.split(';')) {
      const [key, ...value] = part.trim().split('=');
      if (key === name) return decodeURIComponent(value.join('='));
    }
    return null;
  }

  function initialLanguage() {
    const chosen = readCookie(LANG_COOKIE);
    if (chosen === 'fr' || chosen === 'en') return chosen;
    for (const language of navigator.languages || [navigator.language || 'en']) {
      const base = String(language).toLowerCase().split('-')[0];
      if (base === 'fr' || base === 'en') return base;
    }
    return 'en';
  }

  async function setLanguage(language, remember) {
    const answer = await api('GET', '/api/texts', null, language);
    if (remember) {
      document.cookie = `${LANG_COOKIE}=${language}; Path=/; Max-Age=31536000; SameSite=Strict`;
    }
    page.lang = language;
    page.texts = answer.texts;
    document.documentElement.lang = language;
    applyTexts();
    buildTypeChoices();
    for (const button of [$('lang-fr'), $('lang-en')]) {
      button.setAttribute('aria-pressed', String(button.lang === language));
    }
    if (page.state) renderState();
    renderInterfaces();
    renderConnections();
    renderJournal();
    renderNotifyStatus();
  }

  function applyTexts() {
    for (const element of document.querySelectorAll('[data-text]')) {
      element.textContent = t(element.dataset.text);
    }
    for (const element of document.querySelectorAll('[data-text-label]')) {
      element.setAttribute('aria-label', t(element.dataset.textLabel));
    }
    for (const element of document.querySelectorAll('[data-text-placeholder]')) {
      element.placeholder = t(element.dataset.textPlaceholder);
    }
  }

  // Talking to the relay

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.body = body || {};
    }
  }

  function withLanguage(path, language) {
    const url = new URL(path, window.location.origin);
    url.searchParams.set('lang', language || page.lang);
    return url.pathname + url.search;
  }

  /** What went wrong, for the person: the relay's message when it sent one. */
  function problem(error) {
    return (error && error.body && error.body.message) || (error && error.message) || String(error);
  }

  async function api(method, path, body, language) {
    const options = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (method !== 'GET') {
      options.headers['Content-Type'] = 'application/json';
      options.headers['X-CSRF-Token'] = page.csrf;
      options.body = JSON.stringify(body || {});
    }
    let response;
    try {
      response = await fetch(withLanguage(path, language), options);
    } catch (error) {
      throw new ApiError(0, { error: 'network', message: `${t('request-failed')} ${error.message}` });
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch (error) {
      answer = null;
    }
    if (response.status === 401) {
      showSignedOut();
    }
    if (!response.ok) {
      const fallback = { error: 'http', message: `${t('request-failed')} HTTP ${response.status}` };
      const problem = answer && typeof answer === 'object' ? { ...fallback, ...answer } : fallback;
      if (!problem.message) problem.message = fallback.message;
      throw new ApiError(response.status, problem);
    }
    return answer;
  }

  function showSignedOut() {
    if (page.signedOut) return;
    page.signedOut = true;
    $('signed-out').hidden = false;
    $('reconnecting').hidden = true;
    if (page.events) page.events.close();
    for (const control of document.querySelectorAll('button, input, select')) {
      if (!control.closest('.lang')) control.disabled = true;
    }
  }

  function showMessage(element, text) {
    element.textContent = text || '';
    element.hidden = !text;
  }

  // The state: title, activity, start/stop, settings

  function renderState() {
    const state = page.state;
    if (!state) return;
    const listening = Boolean(state.listening);
    const title = listening
      ? (state.addresses && state.addresses.length
        ? `${t('app-title')} — ${state.addresses.join(', ')}` : t('app-title'))
      : t('title-stopped');
    document.title = title;
    $('title').textContent = title;
    $('activity').classList.toggle('running', listening);
    const status = $('listen-status');
    status.textContent = listening ? t('status-listening') : t('status-stopped');
    status.classList.toggle('on', listening);
    renderToggle();
    renderSettings();
    renderStartWithMachine();
    $('version').textContent = state.relay ? `${state.relay.version || ''}` : '';
  }

  function renderToggle() {
    const toggle = $('listen-toggle');
    const listening = Boolean(page.state && page.state.listening);
    toggle.textContent = listening ? t('listen-stop') : t('listen-start');
    toggle.disabled = page.signedOut || page.starting || !page.state;
    toggle.classList.toggle('busy', page.starting);
    toggle.setAttribute('aria-busy', String(page.starting));
  }

  async function toggleListening() {
    const start = !page.state.listening;
    page.starting = true;
    showMessage($('listen-error'), '');
    showMessage($('listen-progress'), start ? t('listen-starting') : t('listen-stopping'));
    renderToggle();
    try {
      const answer = await api('POST', '/api/listening', { listening: start });
      adoptState(answer.state);
      if (answer.check && answer.check.ok && answer.check.message) {
        showTestResult(answer.check);
      }
    } catch (error) {
      showMessage($('listen-error'), problem(error));
      if (error.status !== 401) refreshState();
    } finally {
      page.starting = false;
      showMessage($('listen-progress'), '');
      renderToggle();
    }
  }

  function adoptState(state) {
    if (!state) return;
    // Events carry no CSRF token: keep the one /api/state gave.
    if (state.csrf) page.csrf = state.csrf;
    page.state = state;
    renderState();
  }

  async function refreshState() {
    try {
      adoptState(await api('GET', '/api/state'));
    } catch (error) {
      showMessage($('listen-error'), problem(error));
    }
  }

  // Settings

  const FIELDS = {
    listen_address: { id: 'listen-address', read: (e) => e.value, write: (e, v) => { e.value = v; } },
    port: { id: 'port', read: (e) => e.value.trim(), write: (e, v) => { e.value = v == null ? '' : String(v); } },
    listen_at_start: { id: 'listen-at-start', read: (e) => e.checked, write: (e, v) => { e.checked = Boolean(v); } },
    allow_all: {
      id: 'allow-all', read: () => $('allow-all').checked,
      write: (e, v) => { $('allow-all').checked = Boolean(v); $('allow-listed').checked = !v; },
    },
    proxy_enabled: { id: 'proxy-enabled', read: (e) => e.checked, write: (e, v) => { e.checked = Boolean(v); } },
    proxy_host: { id: 'proxy-host', read: (e) => e.value.trim(), write: (e, v) => { e.value = v || ''; } },
    proxy_port: { id: 'proxy-port', read: (e) => e.value.trim(), write: (e, v) => { e.value = v == null ? '' : String(v); } },
    proxy_auth: { id: 'proxy-auth', read: (e) => e.checked, write: (e, v) => { e.checked = Boolean(v); } },
    proxy_user: { id: 'proxy-user', read: (e) => e.value, write: (e, v) => { e.value = v || ''; } },
  };

  function fieldKeyOf(element) {
    if (element.name === 'allow_all') return 'allow_all';
    for (const [key, field] of Object.entries(FIELDS)) {
      if (field.id === element.id) return key;
    }
    return null;
  }

  function renderSettings() {
    const state = page.state;
    const settings = state.settings || {};
    for (const [key, field] of Object.entries(FIELDS)) {
      if (!page.dirty.has(key)) field.write($(field.id), settings[key]);
    }
    renderInterfaces();
    renderAllowList();
    const editable = Boolean(state.editable) && !page.signedOut;
    for (const fieldset of document.querySelectorAll('#settings-form fieldset.editable')) {
      fieldset.disabled = !editable;
    }
    $('save-settings').disabled = !editable;
    $('settings-locked').hidden = editable || page.signedOut;
    $('proxy-password-set').hidden = !settings.proxy_password_set;
    const overridden = state.overridden || [];
    $('settings-overridden').hidden = overridden.length === 0;
    $('overridden-keys').textContent = overridden.join(', ');
    const config = state.config || {};
    $('config-path').hidden = !config.path;
    $('config-path-value').textContent = config.path || '';
    $('config-will-be-created').hidden = config.exists !== false;
    $('config-not-in-use').hidden = config.in_use !== false;
    $('config-not-in-use-command').textContent = config.path ? `twistd epop --config ${config.path}` : '';
    renderProxyFields();
  }

  function renderProxyFields() {
    const enabled = $('proxy-enabled').checked;
    const auth = $('proxy-auth').checked;
    $('proxy-host').disabled = !enabled;
    $('proxy-port').disabled = !enabled;
    $('proxy-auth').disabled = !enabled;
    $('proxy-user').disabled = !enabled || !auth;
    $('proxy-password').disabled = !enabled || !auth;
    $('allow-entry').disabled = $('allow-all').checked;
    $('allow-add').disabled = $('allow-all').checked;
  }

  function renderInterfaces() {
    const select = $('listen-address');
    const current = page.dirty.has('listen_address')
      ? select.value
      : (page.state && page.state.settings ? page.state.settings.listen_address : select.value);
    select.replaceChildren();
    const seen = new Set();
    const add = (address, label) => {
      if (seen.has(address)) return;
      seen.add(address);
      const option = document.createElement('option');
      option.value = address;
      option.textContent = label;
      select.append(option);
    };
    for (const entry of page.interfaces) {
      const wildcard = entry.address === '0.0.0.0' || entry.address === '::';
      add(entry.address, wildcard ? `${entry.address} (${t('all-addresses')})`
        : `${entry.address} (${entry.interface})`);
    }
    if (current && !seen.has(current)) add(current, current);
    if (current) select.value = current;
  }

  function renderAllowList() {
    const list = $('allow-list');
    const allowed = (page.state && page.state.settings && page.state.settings.allow) || [];
    list.replaceChildren();
    for (const address of allowed) {
      const item = document.createElement('li');
      item.dataset.address = address;
      const name = document.createElement('code');
      name.textContent = address;
      const remove = document.createElement('button');
      remove.type = 'button';
      remove.textContent = t('allow-remove');
      remove.setAttribute('aria-label', `${t('allow-remove')} ${address}`);
      remove.addEventListener('click', () => removeAllowed(address));
      item.append(name, remove);
      list.append(item);
    }
    $('allow-empty').hidden = allowed.length > 0;
  }

  function clearFieldErrors() {
    for (const element of document.querySelectorAll('[data-field-error]')) element.textContent = '';
    for (const element of document.querySelectorAll('#settings-form [aria-invalid]')) {
      element.removeAttribute('aria-invalid');
    }
    showMessage($('settings-error'), '');
    showMessage($('settings-status'), '');
  }

  function showFieldError(key, message) {
    const slot = document.querySelector(`[data-field-error="${key}"]`);
    if (slot) slot.textContent = message;
    const field = FIELDS[key];
    if (field) $(field.id).setAttribute('aria-invalid', 'true');
    if (key === 'allow') $('allow-entry').setAttribute('aria-invalid', 'true');
    return Boolean(slot);
  }

  function showSettingsRefusal(error) {
    const fields = (error.body && error.body.fields) || {};
    const unplaced = [];
    for (const [key, message] of Object.entries(fields)) {
      if (!showFieldError(key, message)) unplaced.push(message);
    }
    showMessage($('settings-error'), [problem(error), ...unplaced].join('\n'));
  }

  function portValue(text, low) {
    if (!/^\d+$/.test(text)) return null;
    const port = Number(text);
    return port >= low && port <= 65535 ? port : null;
  }

  function settingsChanges() {
    const settings = page.state.settings || {};
    const changes = {};
    const problems = {};
    for (const [key, field] of Object.entries(FIELDS)) {
      let value = field.read($(field.id));
      if (key === 'port') {
        value = portValue(value, 0);
        if (value === null) { problems.port = t('port-invalid'); continue; }
      }
      if (key === 'proxy_port') {
        if (value === '') {
          value = null;
        } else {
          value = portValue(value, 1);
          if (value === null) { problems.proxy_port = t('port-invalid'); continue; }
        }
      }
      const saved = settings[key] == null && (value === '' || value === null) ? value : settings[key];
      if (value !== saved) changes[key] = value;
    }
    // Write-only: sent when typed (and authentication is on), never read back.
    const password = $('proxy-password').value;
    if (password !== '' && $('proxy-auth').checked) changes.proxy_password = password;
    return { changes, problems };
  }

  async function saveSettings(event) {
    event.preventDefault();
    clearFieldErrors();
    const { changes, problems } = settingsChanges();
    if (Object.keys(problems).length) {
      for (const [key, message] of Object.entries(problems)) showFieldError(key, message);
      return;
    }
    if (!Object.keys(changes).length) {
      showMessage($('settings-status'), t('nothing-to-save'));
      return;
    }
    await postSettings(changes, () => {
      page.dirty.clear();
      $('proxy-password').value = '';
    });
  }

  async function postSettings(changes, onSaved) {
    const save = $('save-settings');
    save.disabled = true;
    try {
      const answer = await api('POST', '/api/settings', changes);
      onSaved();
      adoptState(answer.state);
      showMessage($('settings-status'), t('settings-saved'));
      // A refused start's reason is stale once the settings changed.
      showMessage($('listen-error'), '');
      return true;
    } catch (error) {
      showSettingsRefusal(error);
      return false;
    } finally {
      save.disabled = !(page.state && page.state.editable);
    }
  }

  async function addAllowed() {
    clearFieldErrors();
    const entry = $('allow-entry');
    const address = entry.value.trim();
    if (!address) {
      entry.focus();
      return;
    }
    const allowed = [...((page.state.settings && page.state.settings.allow) || [])];
    if (allowed.includes(address)) {
      entry.value = '';
      return;
    }
    // Adding one means "only those listed", whatever was saved before.
    const saved = await postSettings({ allow_all: false, allow: [...allowed, address] }, () => { entry.value = ''; });
    if (!saved) entry.focus();
  }

  async function removeAllowed(address) {
    clearFieldErrors();
    if (!window.confirm(`${t('allow-remove-confirm')}\n${address}`)) return;
    const allowed = ((page.state.settings && page.state.settings.allow) || []).filter((a) => a !== address);
    await postSettings({ allow_all: $('allow-all').checked, allow: allowed }, () => {});
  }

  async function importProxy() {
    const button = $('proxy-import');
    const result = $('proxy-import-result');
    button.disabled = true;
    clearFieldErrors();
    try {
      const found = await api('POST', '/api/proxy-import', {});
      if (found.found) {
        FIELDS.proxy_enabled.write($('proxy-enabled'), true);
        FIELDS.proxy_host.write($('proxy-host'), found.host || '');
        FIELDS.proxy_port.write($('proxy-port'), found.port);
        for (const key of ['proxy_enabled', 'proxy_host', 'proxy_port']) page.dirty.add(key);
        renderProxyFields();
        showMessage(result, `${t('proxy-imported')} ${found.source || ''}`);
      } else {
        showMessage(result, String(found.message || ''));
      }
    } catch (error) {
      showMessage(result, '');
      showMessage($('settings-error'), problem(error));
    } finally {
      button.disabled = !(page.state && page.state.editable);
    }
  }

  // Test e-PMSI

  function showTestResult(check) {
    const area = $('test-result');
    area.replaceChildren();
    area.classList.toggle('ok', Boolean(check.ok));
    area.classList.toggle('failed', !check.ok);
    area.append(document.createTextNode(String(check.message || '')));
    area.hidden = false;
  }

  async function testEpmsi() {
    const button = $('test-epmsi');
    const area = $('test-result');
    button.disabled = true;
    area.classList.remove('ok', 'failed');
    showMessage(area, t('test-running'));
    try {
      showTestResult(await api('POST', '/api/test-epmsi', {}));
    } catch (error) {
      showTestResult({ ok: false, step: null, message: problem(error) });
    } finally {
      button.disabled = page.signedOut;
    }
  }

  // Start with the machine

  function renderStartWithMachine(answer) {
    const swm = (page.state && page.state.start_with_machine) || {};
    const status = $('swm-status');
    if (!swm.available) status.textContent = t('swm-unavailable');
    else status.textContent = swm.enabled ? t('swm-enabled') : t('swm-disabled');
    const button = $('start-with-machine');
    button.textContent = swm.enabled ? t('swm-disable') : t('swm-enable');
    button.disabled = page.signedOut;
    // Without systemd (or for a unit the box cannot change) there is nothing to click.
    button.hidden = !swm.available || swm.enabled == null;
    if (answer) {
      const showCommand = answer.changed === false && Boolean(answer.command);
      $('swm-command').textContent = showCommand ? answer.command : '';
      $('swm-command-area').hidden = !showCommand;
    }
  }

  async function toggleStartWithMachine() {
    const swm = (page.state && page.state.start_with_machine) || {};
    const button = $('start-with-machine');
    button.disabled = true;
    showMessage($('swm-error'), '');
    try {
      const answer = await api('POST', '/api/start-with-machine', { enabled: !swm.enabled });
      const { changed, ...kept } = answer;
      page.state.start_with_machine = kept;
      renderStartWithMachine({ changed, command: answer.command });
    } catch (error) {
      showMessage($('swm-error'), problem(error));
      button.disabled = page.signedOut;
    }
  }

  // Connections

  function localTime(iso) {
    if (!iso) return '';
    const when = new Date(iso);
    if (Number.isNaN(when.getTime())) return String(iso);
    return when.toLocaleString(page.lang === 'fr' ? 'fr-FR' : 'en-GB');
  }

  function clientIp(client) {
    if (typeof client !== 'string') return '';
    const cut = client.lastIndexOf(':');
    if (cut > 0 && /^\d+$/.test(client.slice(cut + 1))) {
      const host = client.slice(0, cut);
      return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
    }
    return client;
  }

  function bytesText(row) {
    if (row.bytes_in == null && row.bytes_out == null) return '';
    return `${row.bytes_in == null ? '–' : row.bytes_in} / ${row.bytes_out == null ? '–' : row.bytes_out}`;
  }

  function outcomeText(row) {
    if (row.outcome) return row.outcome_text || row.outcome;
    if (row.state === 'open') return t('connection-open');
    if (row.state === 'lost') return t('connection-lost');
    return '';
  }

  function connectionRow(row) {
    const tr = document.createElement('tr');
    tr.dataset.id = row.id;
    tr.tabIndex = 0;
    tr.className = `state-${row.state || 'open'}`;
    tr.setAttribute('aria-selected', String(page.selection.has(row.id)));
    const cells = [
      ['number', String(row.connection)],
      ['client', row.user ? `${row.client} (${row.user})` : row.client],
      ['kind', row.kind === 'tunnel' ? 'tunnel' : 'e-POP'],
      ['date', localTime(row.opened)],
      ['date', localTime(row.closed)],
      ['bytes', bytesText(row)],
      ['outcome', outcomeText(row)],
    ];
    for (const [name, text] of cells) {
      const td = document.createElement('td');
      td.className = name;
      td.textContent = text || '';
      tr.append(td);
    }
    return tr;
  }

  function renderConnections() {
    const body = $('connections');
    body.replaceChildren(...page.connections.map(connectionRow));
    $('connections-empty').hidden = page.connections.length > 0;
    $('clear-selection').disabled = page.selection.size === 0 || page.signedOut;
  }

  function updateConnectionRow(row) {
    const old = document.querySelector(`#connections tr[data-id="${CSS.escape(row.id)}"]`);
    const fresh = connectionRow(row);
    if (old) {
      const focused = document.activeElement === old;
      old.replaceWith(fresh);
      if (focused) fresh.focus();
    } else {
      $('connections').prepend(fresh);
      $('connections-empty').hidden = true;
    }
  }

  async function loadConnections() {
    const answer = await api('GET', `/api/connections?limit=${CONNECTIONS_LIMIT}`);
    page.connections = answer.connections || [];
    const known = new Set(page.connections.map((row) => row.id));
    for (const id of [...page.selection]) if (!known.has(id)) page.selection.delete(id);
    renderConnections();
  }

  function connectionFromRecord(record) {
    if (!record.id) return;
    let row = page.connections.find((c) => c.id === record.id);
    if (record.type === 'connection-opened') {
      if (row) return;
      row = {
        id: record.id, run: record.run, connection: record.connection, client: record.client,
        kind: record.kind === 'tunnel' ? 'tunnel' : 'e-pop', opened: record.time, closed: null,
        bytes_in: null, bytes_out: null, outcome: null, outcome_text: null, state: 'open', user: record.user || null,
      };
      page.connections.unshift(row);
      if (page.connections.length > CONNECTIONS_KEPT) {
        const gone = page.connections.pop();
        const tr = document.querySelector(`#connections tr[data-id="${CSS.escape(gone.id)}"]`);
        if (tr) tr.remove();
      }
      updateConnectionRow(row);
      return;
    }
    if (!row) return;
    if (record.type === 'object-instantiated') {
      // A tunnel is known as one once its CONNECT is read, as on reload.
      if (record.kind !== 'tunnel' || row.kind === 'tunnel') return;
      row.kind = 'tunnel';
    } else if (record.type === 'connection-closed') {
      row.closed = record.time;
      row.state = 'closed';
      // The outcome is why the connection closed, as the list reloaded from the journal says.
      if (record.reason != null) {
        row.outcome = record.reason;
        row.outcome_text = record.reason_text || null;
      }
    } else if (record.type !== 'object-released') {
      return;
    }
    for (const key of ['bytes_in', 'bytes_out', 'user']) {
      if (record[key] != null) row[key] = record[key];
    }
    updateConnectionRow(row);
  }

  function selectConnection(id, event) {
    const ids = page.connections.map((row) => row.id);
    if (event.shiftKey && page.anchor && ids.includes(page.anchor)) {
      const [from, to] = [ids.indexOf(page.anchor), ids.indexOf(id)].sort((a, b) => a - b);
      if (!(event.ctrlKey || event.metaKey)) page.selection.clear();
      for (const each of ids.slice(from, to + 1)) page.selection.add(each);
    } else if (event.ctrlKey || event.metaKey || event.type === 'keydown') {
      if (page.selection.has(id)) page.selection.delete(id);
      else page.selection.add(id);
      page.anchor = id;
    } else {
      page.selection.clear();
      page.selection.add(id);
      page.anchor = id;
    }
    selectionChanged();
  }

  function selectionChanged() {
    for (const tr of $('connections').children) {
      tr.setAttribute('aria-selected', String(page.selection.has(tr.dataset.id)));
    }
    $('clear-selection').disabled = page.selection.size === 0;
    loadJournal();
  }

  function onConnectionsClick(event) {
    const tr = event.target.closest('tr[data-id]');
    if (!tr) return;
    if (event.shiftKey) event.preventDefault();
    selectConnection(tr.dataset.id, event);
  }

  function onConnectionsKey(event) {
    const tr = event.target.closest('tr[data-id]');
    if (!tr) return;
    if (event.key === ' ' || event.key === 'Enter') {
      event.preventDefault();
      selectConnection(tr.dataset.id, event);
    } else if (event.key === 'ArrowDown' || event.key === 'ArrowUp') {
      event.preventDefault();
      const next = event.key === 'ArrowDown' ? tr.nextElementSibling : tr.previousElementSibling;
      if (next) next.focus();
    }
  }

  // Journal

  function journalParams(before) {
    const params = new URLSearchParams();
    params.set('limit', String(JOURNAL_PAGE));
    if (before) params.set('before', before);
    if (page.journalTypes.size < EVENT_TYPES.length) {
      for (const type of page.journalTypes) params.append('type', type);
    }
    const text = $('journal-text').value.trim();
    if (text) params.set('text', text);
    for (const id of page.selection) params.append('connection', id);
    return params;
  }

  async function loadJournal(older) {
    const query = ++page.journalQuery;
    if (!older && page.journalTypes.size === 0) {
      page.journal = [];
      page.journalNext = null;
      renderJournal();
      return;
    }
    const params = journalParams(older ? page.journalNext : null);
    const more = $('journal-more');
    more.disabled = true;
    try {
      const answer = await api('GET', `/api/journal?${params}`);
      if (query !== page.journalQuery) return;
      const records = answer.records || [];
      page.journal = older ? page.journal.concat(records) : records;
      page.journalNext = answer.next || null;
      showMessage($('journal-error'), '');
      renderJournal();
    } catch (error) {
      if (query === page.journalQuery) showMessage($('journal-error'), problem(error));
    } finally {
      more.disabled = false;
    }
  }

  function journalRow(record) {
    const tr = document.createElement('tr');
    tr.dataset.type = record.type;
    tr.dataset.connection = record.id || '';
    const cells = [
      ['client', clientIp(record.client)],
      ['date', localTime(record.time)],
      ['type', typeName(record.type)],
      ['description', record.description || ''],
    ];
    for (const [name, text] of cells) {
      const td = document.createElement('td');
      td.className = name;
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }

  function newestFirst() {
    return $('journal-newest-first').checked;
  }

  function renderJournal() {
    const rows = page.journal.map(journalRow);
    if (!newestFirst()) rows.reverse();
    $('journal').replaceChildren(...rows);
    $('journal-empty').hidden = page.journal.length > 0;
    $('journal-more').hidden = !page.journalNext;
  }

  function journalWants(record) {
    if (!page.journalTypes.has(record.type)) return false;
    if (page.selection.size && !page.selection.has(record.id)) return false;
    const text = $('journal-text').value.trim().toLowerCase();
    if (text) {
      const haystack = `${record.description || ''} ${record.client || ''}`.toLowerCase();
      if (!haystack.includes(text)) return false;
    }
    return true;
  }

  function addJournalRecord(record) {
    if (!journalWants(record)) return;
    page.journal.unshift(record);
    const body = $('journal');
    if (newestFirst()) body.prepend(journalRow(record));
    else body.append(journalRow(record));
    if (page.journal.length > JOURNAL_KEPT) {
      page.journal.pop();
      const oldest = newestFirst() ? body.lastElementChild : body.firstElementChild;
      if (oldest) oldest.remove();
    }
    $('journal-empty').hidden = true;
  }

  function buildTypeChoices() {
    buildChoices($('journal-types'), 'journal-type', page.journalTypes, () => loadJournal());
    buildChoices($('notify-types'), 'notify-type', page.notifyTypes, () => {});
  }

  function buildChoices(container, name, chosen, changed) {
    container.replaceChildren();
    for (const type of EVENT_TYPES) {
      const id = `${name}-${type}`;
      const wrap = document.createElement('div');
      wrap.className = 'choice';
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.id = id;
      box.name = name;
      box.value = type;
      box.checked = chosen.has(type);
      box.addEventListener('change', () => {
        if (box.checked) chosen.add(type);
        else chosen.delete(type);
        changed();
      });
      const label = document.createElement('label');
      label.htmlFor = id;
      label.textContent = typeName(type);
      wrap.append(box, label);
      container.append(wrap);
    }
  }

  // Notifications ("balloons")

  function renderNotifyStatus() {
    const status = $('notify-status');
    const button = $('notify');
    if (!('Notification' in window)) {
      status.textContent = t('notify-unsupported');
      button.disabled = true;
      return;
    }
    const permission = Notification.permission;
    status.textContent = permission === 'granted' ? t('notify-granted')
      : permission === 'denied' ? t('notify-denied') : '';
    button.hidden = permission === 'granted';
  }

  async function askNotifications() {
    if (!('Notification' in window)) return;
    try {
      await Notification.requestPermission();
    } finally {
      renderNotifyStatus();
    }
  }

  function notify(record) {
    if (!('Notification' in window) || Notification.permission !== 'granted') return;
    if (!document.hidden || !page.notifyTypes.has(record.type)) return;
    const who = clientIp(record.client);
    const title = `${t('app-title')} — ${typeName(record.type)}`;
    new Notification(title, { body: who ? `${who}: ${record.description || ''}` : (record.description || '') });
  }

  // Live events

  let flashTimer = null;

  function flashActivity() {
    const activity = $('activity');
    activity.classList.add('flash');
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => activity.classList.remove('flash'), FLASH_MS);
  }

  function onJournalEvent(message) {
    let record;
    try {
      record = JSON.parse(message.data);
    } catch (error) {
      return;
    }
    if (record.type === 'connection-opened') flashActivity();
    connectionFromRecord(record);
    addJournalRecord(record);
    notify(record);
  }

  function onStateEvent(message) {
    try {
      adoptState(JSON.parse(message.data));
    } catch (error) {
      // A state that cannot be read: the next one will do.
    }
  }

  let probing = false;

  async function onStreamError() {
    if (page.signedOut) return;
    $('reconnecting').hidden = false;
    if (probing) return;
    probing = true;
    try {
      // The stream cannot tell why it failed: a signed-out session shows here.
      await api('GET', '/api/state');
    } catch (error) {
      // Unreachable: EventSource keeps retrying by itself.
    } finally {
      probing = false;
    }
  }

  function connectEvents() {
    if (page.events) page.events.close();
    const events = new EventSource(withLanguage('/api/events'));
    events.addEventListener('journal', onJournalEvent);
    events.addEventListener('state', onStateEvent);
    events.addEventListener('reset', () => reloadAll());
    events.addEventListener('open', () => { $('reconnecting').hidden = true; });
    events.addEventListener('error', onStreamError);
    page.events = events;
  }

  async function reloadAll() {
    const [state, interfaces] = await Promise.all([
      api('GET', '/api/state'),
      api('GET', '/api/interfaces'),
    ]);
    page.interfaces = interfaces.interfaces || [];
    adoptState(state);
    await Promise.all([loadConnections(), loadJournal()]);
  }

  // Wiring

  function markDirty(event) {
    const key = fieldKeyOf(event.target);
    if (key) page.dirty.add(key);
    if (event.target.getAttribute('aria-invalid')) event.target.removeAttribute('aria-invalid');
    renderProxyFields();
  }

  function wire() {
    $('listen-toggle').addEventListener('click', toggleListening);
    $('lang-fr').addEventListener('click', () => switchLanguage('fr'));
    $('lang-en').addEventListener('click', () => switchLanguage('en'));
    const form = $('settings-form');
    form.addEventListener('submit', saveSettings);
    form.addEventListener('input', markDirty);
    form.addEventListener('change', markDirty);
    $('default-port').addEventListener('click', () => {
      $('port').value = String(DEFAULT_PORT);
      page.dirty.add('port');
    });
    $('allow-add').addEventListener('click', addAllowed);
    $('allow-entry').addEventListener('keydown', (event) => {
      if (event.key === 'Enter') {
        event.preventDefault();
        addAllowed();
      }
    });
    $('proxy-import').addEventListener('click', importProxy);
    $('test-epmsi').addEventListener('click', testEpmsi);
    $('start-with-machine').addEventListener('click', toggleStartWithMachine);
    $('connections').addEventListener('click', onConnectionsClick);
    $('connections').addEventListener('keydown', onConnectionsKey);
    $('clear-selection').addEventListener('click', () => {
      page.selection.clear();
      page.anchor = null;
      selectionChanged();
    });
    $('journal-newest-first').addEventListener('change', renderJournal);
    let searchTimer = null;
    $('journal-text').addEventListener('input', () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => loadJournal(), SEARCH_DELAY_MS);
    });
    $('journal-more').addEventListener('click', () => loadJournal(true));
    $('notify').addEventListener('click', askNotifications);
  }

  async function switchLanguage(language) {
    if (language === page.lang) return;
    try {
      await setLanguage(language, true);
      // The stream and the lists render the relay's words in the page's language: fetch them again.
      if (!page.signedOut) {
        connectEvents();
        await Promise.all([loadConnections(), loadJournal()]);
      }
    } catch (error) {
      showMessage($('listen-error'), problem(error));
    }
  }

  async function start() {
    wire();
    try {
      await setLanguage(initialLanguage(), false);
      await reloadAll();
      connectEvents();
    } catch (error) {
      showMessage($('listen-error'), problem(error));
    }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
