// peer-ring live view: polls the node that served this page. No dependencies, no build.
"use strict";

const POLL_MS = 1000;
const COLORS = ["#3182ce", "#dd6b20", "#38a169", "#d53f8c", "#805ad5", "#d69e2e",
  "#319795", "#e53e3e", "#5a67d8", "#718096"];
const state = { token: "", members: [], pending: {}, events: [], ringKey: "" };

function tokenFromPage() {
  const match = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem("peer-ring-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("peer-ring-token") || "";
}

async function api(path) {
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) {
    document.getElementById("token-form").hidden = false;
    throw new Error("a bearer token is needed");
  }
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function text(id, value) { document.getElementById(id).textContent = String(value); }

function event(message) {
  const time = new Date().toLocaleTimeString();
  state.events.unshift(time + "  " + message);
  state.events.length = Math.min(state.events.length, 200);
  const list = document.getElementById("events");
  list.replaceChildren(...state.events.map((line) => {
    const item = document.createElement("li");
    item.textContent = line;
    return item;
  }));
}

function colorOf(member) {
  const index = state.members.indexOf(member);
  return COLORS[(index < 0 ? 0 : index) % COLORS.length];
}

function drawRing(ring) {
  const canvas = document.getElementById("ring");
  const context = canvas.getContext("2d");
  const size = canvas.width, middle = size / 2, outer = middle - 8, inner = outer - 40;
  context.clearRect(0, 0, size, size);
  const step = (2 * Math.PI) / ring.partitions;
  ring.owners.forEach((owner, partition) => {
    const start = partition * step - Math.PI / 2;
    context.beginPath();
    context.arc(middle, middle, outer, start, start + step);
    context.arc(middle, middle, inner, start + step, start, true);
    context.closePath();
    context.fillStyle = colorOf(ring.members[owner]);
    context.fill();
  });
  context.fillStyle = "#1d232a";
  context.font = "14px system-ui";
  context.textAlign = "center";
  context.fillText(ring.partitions + " partitions", middle, middle);
  const legend = document.getElementById("legend");
  legend.replaceChildren(...ring.members.map((member) => {
    const item = document.createElement("li");
    const swatch = document.createElement("i");
    swatch.style.background = colorOf(member);
    item.append(swatch, member + (ring.zones[member] ? " (" + ring.zones[member] + ")" : ""));
    return item;
  }));
}

function cell(row, value, numeric) {
  const td = document.createElement("td");
  td.textContent = value === undefined || value === null ? "–" : String(value);
  if (numeric) td.className = "num";
  row.append(td);
}

function drawMembers(cluster, nodes) {
  const body = document.querySelector("#members tbody");
  const suspected = new Set(cluster.suspected || []);
  body.replaceChildren(...cluster.members.map((member) => {
    const row = document.createElement("tr");
    row.dataset.member = member;
    const info = (nodes && nodes[member]) || {};
    const stats = info.stats || {}, handoff = info.handoff || {};
    const down = info.ok === false || suspected.has(member);
    if (down) row.className = "down";
    cell(row, member);
    cell(row, (cluster.zones || {})[member] || "");
    cell(row, down ? "unreachable" : info.ready === false ? "syncing" : "ready");
    cell(row, cluster.owned_partitions[member], true);
    cell(row, cluster.replica_partitions[member], true);
    cell(row, stats.keys, true);
    cell(row, stats.size_bytes, true);
    cell(row, handoff.pending_partitions, true);
    cell(row, handoff.hints_pending, true);
    return row;
  }));
}

function noteChanges(cluster, nodes) {
  const before = new Set(state.members), after = new Set(cluster.members);
  if (state.members.length) {
    for (const m of after) if (!before.has(m)) event("member joined: " + m);
    for (const m of before) if (!after.has(m)) event("member left the ring: " + m);
  }
  for (const [member, info] of Object.entries(nodes || {})) {
    const handoff = info.handoff || {};
    const now = handoff.pending_partitions || 0, was = state.pending[member] || 0;
    if (now !== was) event(member + ": " + now + " partition(s) to pull (was " + was + ")");
    state.pending[member] = now;
    if (handoff.leave_state && handoff.leave_state !== "none") {
      event(member + ": leave " + handoff.leave_state);
    }
  }
  state.members = cluster.members.slice();
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const cluster = await api("/cluster");
    const ringKey = cluster.members.join(",") + "|" + JSON.stringify(cluster.zones || {});
    let nodes = null;
    try { nodes = (await api("/admin/nodes")).nodes; } catch (error) { nodes = null; }
    noteChanges(cluster, nodes);
    text("self", cluster.self);
    text("member-count", cluster.members.length);
    text("partition-count", cluster.partitions);
    text("replication", cluster.replication);
    text("quorum", cluster.quorum);
    drawMembers(cluster, nodes);
    if (ringKey !== state.ringKey) {
      drawRing(await api("/admin/ring"));
      state.ringKey = ringKey;
    }
    status.textContent = cluster.ready ? "node ready" : "node not ready";
    status.className = "status " + (cluster.ready ? "ok" : "bad");
    document.body.dataset.updated = String(Date.now());
  } catch (error) {
    status.textContent = String(error.message || error);
    status.className = "status bad";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.getElementById("token-form").addEventListener("submit", (submitted) => {
  submitted.preventDefault();
  state.token = document.getElementById("token").value;
  sessionStorage.setItem("peer-ring-token", state.token);
  document.getElementById("token-form").hidden = true;
});
state.token = tokenFromPage();
poll();
