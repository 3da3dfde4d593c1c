// The one DOM builder of the status page's scripts (page.js, actions.js, postmortem.js):
// elements, attributes and text nodes only; data never goes into the page as HTML.
"use strict";

window.gitopsDom = (function () {
  // Appends children (nodes, or strings as text nodes), skipping null, undefined and false.
  function add(node, ...children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // An element: "class", "text" (its textContent), "on<event>" listeners, other attributes
  // (true: present; null, undefined, false: absent), then its children as add() takes them.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    return add(node, ...children);
  }

  return { el, add };
})();
