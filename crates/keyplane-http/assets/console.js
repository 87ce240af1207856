// keyplane console: dialogs, row menus, local times, and the show-once secret dialog.
// No framework, no build step. Secrets only ever live in the dialog's text while it is open;
// they are never written to storage, and the dialog is emptied (and the page reloaded) on close.
"use strict";

(function () {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";

  // ----- times: the viewer's local time, with the UTC value on hover -----
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      const d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      const utc = t.getAttribute("title") || t.textContent;
      t.textContent = d.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
      });
      t.setAttribute("title", utc);
    });
  }

  // The chart's time labels: the viewer's local time too (the server draws them in UTC).
  function chartTimes(root) {
    root.querySelectorAll(".chart [data-datetime]").forEach(function (t) {
      const d = new Date(t.getAttribute("data-datetime"));
      if (isNaN(d.getTime())) return;
      t.textContent = t.getAttribute("data-unit") === "day"
        ? d.toLocaleDateString(undefined, { month: "short", day: "numeric" })
        : d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
    });
  }

  // ----- copy buttons next to shortened ids (the whole id is in data-copy and the title) -----
  function copyText(button) {
    const text = button.getAttribute("data-copy");
    const done = function () {
      button.classList.add("done");
      button.textContent = "Copied";
      setTimeout(function () { button.classList.remove("done"); button.textContent = "Copy"; }, 1500);
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(done, function () {
        const code = button.previousElementSibling;
        if (code) { code.textContent = text; selectText(code); }
      });
    } else {
      const code = button.previousElementSibling;
      if (code) { code.textContent = text; selectText(code); }
    }
  }

  // ----- dialogs -----
  function openDialog(id) {
    const d = document.getElementById(id);
    if (!d) return;
    closeMenus();
    d.showModal();
    const first = d.querySelector("input:not([type=hidden]), select, textarea, button");
    if (first) first.focus();
  }

  function closeMenus(except) {
    document.querySelectorAll("details.menu[open]").forEach(function (m) {
      if (m !== except) m.removeAttribute("open");
    });
  }

  function confirmAction(text) {
    const d = document.getElementById("confirm-dialog");
    if (!d) return Promise.resolve(true);
    document.getElementById("confirm-text").textContent = text;
    return new Promise(function (resolve) {
      const ok = document.getElementById("confirm-ok");
      const cancel = document.getElementById("confirm-cancel");
      function finish(answer) {
        ok.removeEventListener("click", onOk);
        cancel.removeEventListener("click", onCancel);
        d.removeEventListener("close", onCancel);
        if (d.open) d.close();
        resolve(answer);
      }
      function onOk() { finish(true); }
      function onCancel() { finish(false); }
      ok.addEventListener("click", onOk);
      cancel.addEventListener("click", onCancel);
      d.addEventListener("close", onCancel);
      d.showModal();
      cancel.focus();
    });
  }

  // ----- errors, shown where they happened -----
  // The input a field's error is about: by name, or for a repeated row's field
  // (`federated_credentials[1].audience`) that input of the row, counting filled rows only, as
  // the server does.
  function fieldInput(form, message, field) {
    if (!field) return null;
    const direct = form.querySelector('[name="' + field + '"]');
    if (direct) return direct;
    const m = /federated_credentials\[(\d+)\](?:\.(\w+))?/.exec(message);
    if (field !== "federated_credentials" || !m) return null;
    const filled = Array.from(form.querySelectorAll("[data-row]")).filter(function (row) {
      return Array.from(row.querySelectorAll("input")).some(function (i) { return i.value.trim() !== ""; });
    });
    const row = filled[Number(m[1])];
    if (!row) return null;
    const name = { issuer: "fc_issuer", subject: "fc_subject", subject_pattern: "fc_subject", audience: "fc_audience" }[m[2]];
    return row.querySelector('[name="' + (name || "fc_issuer") + '"]');
  }

  function showError(form, message, field) {
    form.querySelectorAll("[data-field-error]").forEach(function (el) { el.remove(); });
    form.querySelectorAll("[aria-invalid]").forEach(function (el) { el.removeAttribute("aria-invalid"); });
    let box = form.querySelector(".form-error") ||
      (form.parentElement && form.parentElement.querySelector(":scope > .form-error"));
    const input = fieldInput(form, message, field);
    if (input && !input.closest("[hidden]")) {
      // Next to the field at fault, so it is seen however long the form is.
      const near = document.createElement("p");
      near.className = "form-error";
      near.setAttribute("role", "alert");
      near.setAttribute("data-field-error", "");
      near.textContent = message;
      (input.closest("[data-row]") || input).before(near);
      if (box) box.hidden = true;
      input.setAttribute("aria-invalid", "true");
      input.focus({ preventScroll: true });
      near.scrollIntoView({ block: "center" });
      return;
    }
    if (!box) {
      box = document.getElementById("page-error");
      if (!box) {
        box = document.createElement("p");
        box.id = "page-error";
        box.className = "form-error toast";
        box.setAttribute("role", "alert");
        document.querySelector("main").prepend(box);
      }
    }
    box.textContent = message;
    box.hidden = false;
    box.scrollIntoView({ block: "nearest" });
  }

  async function post(url, body) {
    const resp = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-CSRF-Token": csrf,
        "Accept": "application/json",
      },
      body: body,
    });
    let data = {};
    try { data = await resp.json(); } catch (e) { data = {}; }
    if (!resp.ok) {
      const err = new Error(data.error || "Something went wrong (HTTP " + resp.status + "). Try again.");
      err.field = data.field;
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  // ----- the show-once secret dialog -----
  let pendingTokenAction = null;

  function secretItem(label, value) {
    const row = document.createElement("div");
    row.className = "secret-item";
    const l = document.createElement("span");
    l.className = "secret-label";
    l.textContent = label;
    const code = document.createElement("code");
    code.className = "secret-value";
    code.setAttribute("data-secret-label", label);
    code.textContent = value;
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "secondary small";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy " + label);
    const status = document.createElement("span");
    status.className = "copied";
    status.setAttribute("role", "status");
    copy.addEventListener("click", function () {
      const done = function () { status.textContent = "Copied"; };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(code.textContent).then(done, function () { selectText(code); });
      } else {
        selectText(code);
      }
    });
    row.append(l, code, copy, status);
    return row;
  }

  function selectText(el) {
    const range = document.createRange();
    range.selectNodeContents(el);
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  function showSecret(s) {
    const d = document.getElementById("secret-dialog");
    document.getElementById("secret-title").textContent = s.title;
    document.getElementById("secret-warning").textContent = s.warning;
    const items = document.getElementById("secret-items");
    items.replaceChildren();
    s.items.forEach(function (it) { items.append(secretItem(it.label, it.value)); });
    const action = document.getElementById("secret-token-action");
    pendingTokenAction = s.token_action || null;
    action.hidden = !pendingTokenAction;
    const err = d.querySelector(".form-error");
    err.hidden = true;
    if (!d.open) d.showModal();
    document.getElementById("secret-close").focus();
  }

  function wireSecretDialog() {
    const d = document.getElementById("secret-dialog");
    if (!d) return;
    document.getElementById("secret-close").addEventListener("click", function () { d.close(); });
    document.getElementById("secret-token-action").addEventListener("click", async function () {
      if (!pendingTokenAction) return;
      const btn = this;
      btn.disabled = true;
      try {
        const data = await post(pendingTokenAction, "");
        const items = document.getElementById("secret-items");
        data.secret.items.forEach(function (it) { items.append(secretItem(it.label, it.value)); });
      } catch (e) {
        const err = d.querySelector(".form-error");
        err.textContent = e.message;
        err.hidden = false;
      } finally {
        btn.disabled = false;
      }
    });
    d.addEventListener("close", function () {
      // Forget the secret: empty the dialog, then show the page afresh.
      document.getElementById("secret-items").replaceChildren();
      document.getElementById("secret-title").textContent = "";
      pendingTokenAction = null;
      window.location.reload();
    });
  }

  // ----- forms the script submits -----
  async function submitForm(form) {
    const text = form.getAttribute("data-confirm");
    if (text && !(await confirmAction(text))) return;
    const buttons = form.querySelectorAll("button[type=submit]");
    buttons.forEach(function (b) { b.disabled = true; });
    try {
      const data = await post(form.action, new URLSearchParams(new FormData(form)).toString());
      const dialog = form.closest("dialog");
      if (data.secret) {
        if (dialog && dialog.id !== "secret-dialog") dialog.close();
        form.reset();
        showSecret(data.secret);
      } else if (data.redirect) {
        window.location.assign(data.redirect);
      } else {
        window.location.reload();
      }
    } catch (e) {
      showError(form, e.message, e.field);
    } finally {
      buttons.forEach(function (b) { b.disabled = false; });
    }
  }

  function welcomeToken() {
    const input = document.getElementById("welcome-token");
    if (!input) return;
    const m = /(?:^#|&)token=([A-Za-z0-9]+)/.exec(window.location.hash);
    if (m) {
      input.value = m[1];
      // Take the token out of the address bar and history.
      history.replaceState(null, "", window.location.pathname);
    } else {
      const form = document.getElementById("welcome-form");
      showError(form, "This page needs the whole one-time link you were given, including the part after '#'.");
    }
  }

  // ----- a client's authentication fields -----
  // The key fields belong to private_key_jwt only: with a secret method they are hidden and
  // disabled (so they are not sent), and come back as they were when it is chosen again.
  function syncAuthFields(select) {
    const form = select.form;
    form.querySelectorAll("fieldset[data-for-method]").forEach(function (fs) {
      const on = fs.getAttribute("data-for-method") === select.value;
      fs.hidden = !on;
      fs.disabled = !on;
    });
  }

  function addRow(rows) {
    const all = rows.querySelectorAll("[data-row]");
    const last = all[all.length - 1];
    const row = last.cloneNode(true);
    row.querySelectorAll("input").forEach(function (i) { i.value = ""; i.removeAttribute("aria-invalid"); });
    row.querySelectorAll("select").forEach(function (s) { s.selectedIndex = 0; });
    last.after(row);
    row.querySelector("input").focus();
  }

  function removeRow(row) {
    const rows = row.closest("[data-rows]");
    if (rows.querySelectorAll("[data-row]").length > 1) {
      row.remove();
    } else {
      row.querySelectorAll("input").forEach(function (i) { i.value = ""; });
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    chartTimes(document);
    wireSecretDialog();
    welcomeToken();

    document.querySelectorAll("select[data-auth-method]").forEach(function (sel) {
      syncAuthFields(sel);
      sel.addEventListener("change", function () { syncAuthFields(sel); });
    });

    document.addEventListener("click", function (ev) {
      const copier = ev.target.closest("button[data-copy]");
      if (copier) {
        ev.preventDefault();
        copyText(copier);
        return;
      }
      const opener = ev.target.closest("[data-open]");
      if (opener) {
        ev.preventDefault();
        openDialog(opener.getAttribute("data-open"));
        return;
      }
      const adder = ev.target.closest("[data-add-row]");
      if (adder) {
        ev.preventDefault();
        addRow(adder.closest("[data-rows]"));
        return;
      }
      const remover = ev.target.closest("[data-remove-row]");
      if (remover) {
        ev.preventDefault();
        removeRow(remover.closest("[data-row]"));
        return;
      }
      const closer = ev.target.closest("[data-close]");
      if (closer) {
        ev.preventDefault();
        const d = closer.closest("dialog");
        if (d) d.close();
        return;
      }
      const menu = ev.target.closest("details.menu");
      closeMenus(menu);
    });

    document.addEventListener("keydown", function (ev) {
      // "/" focuses the search box, as on GitHub, unless one is typing somewhere already.
      const typing = ev.target.closest && ev.target.closest("input, textarea, select, [contenteditable]");
      if (ev.key === "/" && !typing && !ev.ctrlKey && !ev.metaKey && !ev.altKey) {
        const q = document.getElementById("search-q");
        if (q && !document.querySelector("dialog[open]")) {
          ev.preventDefault();
          q.focus();
          q.select();
          return;
        }
      }
      if (ev.key === "Escape") {
        const open = document.querySelector("details.menu[open]");
        if (open) {
          open.removeAttribute("open");
          const s = open.querySelector("summary");
          if (s) s.focus();
        }
      }
    });

    document.addEventListener("submit", function (ev) {
      const form = ev.target;
      if (form.hasAttribute("data-js")) {
        ev.preventDefault();
        submitForm(form);
      }
    });

    document.querySelectorAll("select[data-autosubmit]").forEach(function (sel) {
      sel.addEventListener("change", function () {
        if (sel.name === "org_id") {
          const project = sel.form.querySelector('select[name="project_id"]');
          if (project) project.disabled = true;
        }
        sel.form.requestSubmit();
      });
    });
  });
})();
