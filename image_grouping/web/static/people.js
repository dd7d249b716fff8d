// The People pages' edits: each button calls the JSON API (/api, the same handlers as the CLI) and the
// page shows the result. No framework, no build step.

const status = () => document.getElementById("status");

function say(message, isError = false) {
  const region = status();
  if (!region) return;
  region.textContent = message;
  region.classList.toggle("error", isError);
}

async function api(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof answer.detail === "string" ? answer.detail : JSON.stringify(answer.detail);
    throw new Error(detail || `${response.status} ${response.statusText}`);
  }
  return answer;
}

async function attempt(work, done) {
  try {
    await work();
    if (done) say(done);
    return true;
  } catch (error) {
    say(`Not done: ${error.message}`, true);
    return false;
  }
}

const selected = (selector) => [...document.querySelectorAll(`${selector}:checked`)].map((box) => Number(box.value));

function updateSelection() {
  const persons = selected("[data-select-person]");
  const faces = selected("[data-select-face]");
  const count = document.querySelector("[data-selection-count]");
  const merge = document.querySelector("[data-action=merge-selected]");
  if (merge) {
    merge.disabled = persons.length < 2;
    count.textContent = persons.length ? `${persons.length} selected` : "Select persons to merge them.";
  }
  for (const button of document.querySelectorAll("[data-action=move-selected], [data-action=reject-selected]")) {
    button.disabled = faces.length === 0;
    count.textContent = faces.length ? `${faces.length} selected` : "Select faces to move them.";
  }
}

function removeFace(faceId) {
  document.querySelector(`.face[data-face-id="${faceId}"]`)?.remove();
  const total = document.querySelector("[data-face-total]");
  if (total) total.textContent = String(Math.max(0, Number(total.textContent) - 1));
}

const person = () => document.querySelector(".person-heading");

const namedPersons = new Map(); // lower-cased name -> ids, for a name typed without its number

async function loadPersonChoices() {
  const list = document.getElementById("person-choices");
  if (!list || list.childElementCount) return;
  const page = await api("GET", "/api/persons?limit=1000");
  const own = Number(person().dataset.personId);
  for (const each of page.persons) {
    if (each.id === own) continue;
    const option = document.createElement("option");
    option.value = `${each.name || "Unnamed"} #${each.id}`;
    list.append(option);
    if (each.name) {
      const key = each.name.toLowerCase();
      namedPersons.set(key, [...(namedPersons.get(key) || []), each.id]);
    }
  }
}

function createdPerson(answer) {
  for (const change of answer.changes) {
    const created = change.data.changes?.created;
    if (created?.length) return created[0];
  }
  return null;
}

function personIdFrom(text) {
  const number = text.match(/#(\d+)\s*$/) || text.match(/^(\d+)$/); // "Name #12", or "12"
  if (number) return Number(number[1]);
  const named = namedPersons.get(text.toLowerCase()) || [];
  return named.length === 1 ? named[0] : undefined; // two persons of one name: pick from the list
}

const actions = {
  async "merge-selected"() {
    const ids = selected("[data-select-person]");
    const cards = ids.map((id) => document.querySelector(`.card[data-person-id="${id}"]`));
    const names = cards.map((card) => card.dataset.personName);
    // The first selected in the grid's order (named first, then the largest) stays.
    if (!confirm(`Merge ${names.join(", ")} into ${names[0]}?`)) return;
    const [target, ...sources] = ids;
    if (await attempt(() => api("POST", `/api/persons/${target}/merge`, { source_ids: sources }))) {
      location.reload();
    }
  },
  async hide(button) {
    const hidden = button.dataset.hidden !== "true";
    const id = person().dataset.personId;
    if (await attempt(() => api("PATCH", `/api/persons/${id}`, { hidden }))) location.reload();
  },
  async forget() {
    document.getElementById("forget-dialog").showModal();
  },
  async reject(button) {
    const face = button.dataset.faceId;
    const id = Number(person().dataset.personId);
    if (await attempt(() => api("POST", `/api/faces/${face}/reject`, { person_id: id }), "Face removed from this person.")) {
      removeFace(face);
    }
  },
  async "reject-selected"() {
    const id = Number(person().dataset.personId);
    for (const face of selected("[data-select-face]")) {
      if (!(await attempt(() => api("POST", `/api/faces/${face}/reject`, { person_id: id })))) return;
      removeFace(face);
    }
    say("Faces removed from this person.");
    updateSelection();
  },
  async cover(button) {
    const id = person().dataset.personId;
    const face = Number(button.dataset.faceId);
    if (await attempt(() => api("PATCH", `/api/persons/${id}`, { cover_face_id: face }))) location.reload();
  },
  async "move-selected"() {
    const dialog = document.getElementById("move-dialog");
    document.getElementById("move-target").value = "";  // each move picks its person afresh
    dialog.showModal();
    await attempt(loadPersonChoices);
  },
  async "accept-face"(button) {
    const face = button.dataset.faceId;
    const body = { person_id: Number(button.dataset.personId) };
    if (await attempt(() => api("POST", `/api/faces/${face}/assign`, body), "Face added to the person.")) {
      removeFace(face);
    }
  },
  async "decline-face"(button) {
    const face = button.dataset.faceId;
    const body = { person_id: Number(button.dataset.personId) };
    if (await attempt(() => api("POST", `/api/faces/${face}/reject`, body), "Noted: not that person.")) {
      removeFace(face);
    }
  },
  async "new-person"(button) {
    const face = button.dataset.faceId;
    if (await attempt(() => api("POST", `/api/faces/${face}/assign`, { person_id: null }), "New person made.")) {
      removeFace(face);
    }
  },
  async "accept-merge"(button) {
    const { target, source } = button.dataset;
    const merged = await attempt(
      () => api("POST", `/api/persons/${target}/merge`, { source_ids: [Number(source)] }),
      "Merged.",
    );
    if (merged) button.closest(".pair").remove();
  },
};

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button || !(button.dataset.action in actions)) return;
  event.preventDefault();
  button.disabled = true;
  actions[button.dataset.action](button).finally(() => {
    if (button.isConnected) button.disabled = false;
    updateSelection();
  });
});

document.addEventListener("change", (event) => {
  if (event.target.matches("[data-select-person], [data-select-face]")) {
    event.target.closest(".card")?.classList.toggle("chosen", event.target.checked);
    updateSelection();
  }
});

document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (form.matches("[data-rename]")) {
    event.preventDefault();
    const id = person().dataset.personId;
    const name = form.elements.name.value.trim();
    if (await attempt(() => api("PATCH", `/api/persons/${id}`, { name: name || null }), "Name saved.")) {
      document.title = `${name || "Unnamed"} · image-grouping`;
    }
  }
});

document.addEventListener("close", async (event) => {
  const dialog = event.target;
  if (dialog.id === "forget-dialog" && dialog.returnValue === "forget") {
    const id = person().dataset.personId;
    if (await attempt(() => api("DELETE", `/api/persons/${id}`))) location.assign("/");
  }
  if (dialog.id === "move-dialog" && dialog.returnValue === "move") {
    const text = document.getElementById("move-target").value.trim();
    const target = text ? personIdFrom(text) : null;
    if (target === undefined) {
      say(`Not a person: "${text}". Pick one from the list, or leave it empty for a new person.`, true);
      return;
    }
    // To a new person: the first face makes it, the others join it.
    let person = target;
    for (const face of selected("[data-select-face]")) {
      let answer;
      if (!(await attempt(async () => { answer = await api("POST", `/api/faces/${face}/assign`, { person_id: person }); }))) return;
      person ??= createdPerson(answer);
      removeFace(face);
    }
    say(target === null ? "Moved to a new person." : "Moved.");
    updateSelection();
  }
}, true);
