// Every visible rendered line of text in the document, with its box in screenshot pixels.
//
// Evaluated by renderers/html.py as `(options) => {...}` after layout settles. Text nodes are
// walked in DOM order (open shadow roots included); each word is measured with
// Range.getClientRects, a word that wraps is measured per grapheme, and pieces that sit on the
// same visual line of the same block box are merged into one line. Text that is not painted is
// skipped: display/visibility/opacity (checkVisibility), transparent fill, zero-size boxes,
// text clipped away by an ancestor with overflow other than visible, and text under an opaque
// element that covers it. Text that is painted but cannot be seen (a colour near the
// background's, an opacity near 0) is left to the screenshot's pixels (renderers/html.py).
// Boxes are client rectangles plus scroll, times the device scale.
(options) => {
  const scale = options.scale;
  const maxTextNodes = options.maxTextNodes;
  const SKIP = new Set(["script", "style", "noscript", "template", "head", "title", "option",
    "select", "textarea", "iframe", "object", "embed", "canvas", "video", "audio", "math"]);
  const REPLACED = new Set(["img", "video", "canvas", "iframe", "svg", "object", "embed",
    "picture", "input", "button", "select", "textarea"]);
  const scrollX = window.scrollX, scrollY = window.scrollY;
  const segmenter = new Intl.Segmenter(undefined, {granularity: "grapheme"});

  const styles = new Map();
  const style = (el) => {
    let s = styles.get(el);
    if (s === undefined) { s = getComputedStyle(el); styles.set(el, s); }
    return s;
  };
  const alpha = (colour) => {
    const m = /rgba?\(([^)]*)\)/.exec(colour || "");
    if (!m) return colour === "transparent" ? 0 : 1;
    const parts = m[1].split(/[\s,/]+/).filter(Boolean);
    return parts.length > 3 ? parseFloat(parts[3]) : 1;
  };

  // The box whose lines a text node's pieces belong to: the nearest non-inline ancestor.
  const blocks = new Map();
  const blockOf = (el) => {
    let e = el;
    const seen = [];
    while (e && e.nodeType === 1) {
      if (blocks.has(e)) { const b = blocks.get(e); seen.forEach((x) => blocks.set(x, b)); return b; }
      seen.push(e);
      const d = style(e).display;
      if (d !== "inline" && d !== "contents") break;
      e = e.parentElement || (e.getRootNode() && e.getRootNode().host) || null;
    }
    const block = e || document.documentElement;
    seen.forEach((x) => blocks.set(x, block));
    return block;
  };

  // Client rectangle left visible by ancestors that clip their overflow (null: no clip).
  const clips = new Map();
  const clipOf = (el) => {
    if (!el || el.nodeType !== 1 || el === document.documentElement || el === document.body) {
      return null;
    }
    if (clips.has(el)) return clips.get(el);
    const s = style(el);
    const parent = el.parentElement || (el.getRootNode() && el.getRootNode().host) || null;
    let clip = s.position === "fixed" ? null : clipOf(parent);
    if (s.overflowX !== "visible" || s.overflowY !== "visible") {
      const r = el.getBoundingClientRect();
      const own = {left: r.left, top: r.top, right: r.right, bottom: r.bottom};
      clip = clip === null ? own : {left: Math.max(clip.left, own.left),
        top: Math.max(clip.top, own.top), right: Math.min(clip.right, own.right),
        bottom: Math.min(clip.bottom, own.bottom)};
    }
    clips.set(el, clip);
    return clip;
  };
  const insideClip = (r, clip) => {
    if (clip === null) return true;
    const w = Math.min(r.right, clip.right) - Math.max(r.left, clip.left);
    const h = Math.min(r.bottom, clip.bottom) - Math.max(r.top, clip.top);
    return w > 0 && h > 0 && w * h >= 0.7 * (r.right - r.left) * (r.bottom - r.top);
  };

  const painted = new Map();
  const isPainted = (el) => {
    let ok = painted.get(el);
    if (ok !== undefined) return ok;
    const s = style(el);
    ok = true;
    if (el.checkVisibility && !el.checkVisibility({opacityProperty: true,
      visibilityProperty: true, contentVisibilityAuto: true})) ok = false;
    else if (s.visibility !== "visible") ok = false;
    else if (alpha(s.webkitTextFillColor || s.color) === 0 &&
             (s.backgroundClip || s.webkitBackgroundClip) !== "text") ok = false;
    painted.set(el, ok);
    return ok;
  };

  const opaque = (el) => {
    if (REPLACED.has(el.localName)) return true;
    const s = style(el);
    return alpha(s.backgroundColor) > 0.5 || (s.backgroundImage && s.backgroundImage !== "none");
  };
  // Is the point covered by an opaque element that is neither the text's element nor related?
  const uncovered = (el, x, y) => {
    if (x < 0 || y < 0 || x >= window.innerWidth || y >= window.innerHeight) return true;
    for (const hit of document.elementsFromPoint(x, y)) {
      if (hit === el || hit.contains(el) || el.contains(hit)) return true;
      if (opaque(hit)) return false;
    }
    return true;
  };

  const transform = (text, el) => {
    const t = style(el).textTransform;
    if (t === "uppercase") return text.toUpperCase();
    if (t === "lowercase") return text.toLowerCase();
    if (t === "capitalize") return text.charAt(0).toUpperCase() + text.slice(1);
    return text;
  };

  const range = document.createRange();
  const rectsOf = (node, start, end) => {
    range.setStart(node, start);
    range.setEnd(node, end);
    return Array.from(range.getClientRects()).filter((r) => r.width >= 0.5 && r.height >= 0.5);
  };

  // A node wholly outside the viewport (the capture) cannot give a line: one measurement
  // skips all its words, which matters on long pages captured one screen high.
  const offScreen = (node) => {
    range.selectNodeContents(node);
    const r = range.getBoundingClientRect();
    return r.bottom < 0 || r.right < 0 || r.top > window.innerHeight || r.left > window.innerWidth;
  };

  // Two boxes sit on one line when they share most of the line's cross extent: the height
  // band for horizontal text, the width band for vertical writing modes.
  const sameBand = (a, b, el) => {
    const vertical = style(el).writingMode.startsWith("vertical") ||
      style(el).writingMode.startsWith("sideways");
    const [lo, hi] = vertical ? ["left", "right"] : ["top", "bottom"];
    const overlap = Math.min(a[hi], b[hi]) - Math.max(a[lo], b[lo]);
    return overlap > 0.5 * Math.min(a[hi] - a[lo], b[hi] - b[lo]);
  };

  const lines = [];
  const openLine = new Map();  // block -> the line its last piece went to
  let spaceBefore = false;

  const addPiece = (el, text, r, space) => {
    if (!insideClip(r, clipOf(el))) return;
    if (!uncovered(el, (r.left + r.right) / 2, (r.top + r.bottom) / 2)) return;
    const block = blockOf(el);
    const piece = {left: r.left, top: r.top, right: r.right, bottom: r.bottom};
    const line = openLine.get(block);
    if (line !== undefined) {
      // Same block, same band of height: one line, whatever the horizontal order (bidi runs
      // of a line are laid out right to left inside a left-to-right line and vice versa).
      if (sameBand(line, piece, el)) {
        line.text += (space && line.text ? " " : "") + text;
        line.left = Math.min(line.left, piece.left);
        line.top = Math.min(line.top, piece.top);
        line.right = Math.max(line.right, piece.right);
        line.bottom = Math.max(line.bottom, piece.bottom);
        return;
      }
    }
    const fresh = {text, ...piece};
    lines.push(fresh);
    openLine.set(block, fresh);
  };

  // A word that wraps (or a CJK run without spaces): group its graphemes by the line they sit on.
  const addWrapped = (node, el, start, word, space) => {
    let current = null;
    let offset = start;
    for (const {segment} of segmenter.segment(word)) {
      const rects = rectsOf(node, offset, offset + segment.length);
      offset += segment.length;
      if (rects.length === 0) continue;
      const r = rects[0];
      if (current !== null && sameBand(current, r, el)) {
        current.text += segment;
        current.left = Math.min(current.left, r.left);
        current.right = Math.max(current.right, r.right);
        current.top = Math.min(current.top, r.top);
        current.bottom = Math.max(current.bottom, r.bottom);
      } else {
        if (current !== null) { addPiece(el, transform(current.text, el), current, space); space = false; }
        current = {text: segment, left: r.left, top: r.top, right: r.right, bottom: r.bottom};
      }
    }
    if (current !== null) addPiece(el, transform(current.text, el), current, space);
  };

  const addTextNode = (node) => {
    const el = node.parentElement || (node.parentNode && node.parentNode.host);
    const data = node.data;
    if (!el || !isPainted(el) || offScreen(node)) {
      spaceBefore = spaceBefore || /\s$/.test(data);
      return;
    }
    const words = /\S+/g;
    let m;
    while ((m = words.exec(data)) !== null) {
      const space = spaceBefore || (m.index > 0);
      spaceBefore = false;
      const rects = rectsOf(node, m.index, m.index + m[0].length);
      if (rects.length === 1) addPiece(el, transform(m[0], el), rects[0], space);
      else if (rects.length > 1) addWrapped(node, el, m.index, m[0], space);
    }
    spaceBefore = /\s$/.test(data);
  };

  let textNodes = 0;
  let truncated = false;
  const stack = [document.body || document.documentElement];
  while (stack.length) {
    const node = stack.pop();
    if (node.nodeType === 3) {
      if (++textNodes > maxTextNodes) { truncated = true; break; }
      addTextNode(node);
      continue;
    }
    if (node.nodeType === 1 && SKIP.has(node.localName)) continue;
    const kids = node.childNodes;
    for (let i = kids.length - 1; i >= 0; i--) stack.push(kids[i]);
    if (node.shadowRoot) stack.push(node.shadowRoot);
  }

  return {
    truncated,
    textNodes,
    lines: lines.map((l) => ({
      text: l.text,
      box: [(l.left + scrollX) * scale, (l.top + scrollY) * scale,
            (l.right + scrollX) * scale, (l.bottom + scrollY) * scale],
    })),
  };
}
