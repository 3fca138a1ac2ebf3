// Just enough of React's hooks for one component, to test react.js without npm: state
// cells by call order, a synchronous re-render on setState, effects run after render.
let current = null;

export function render(component, props = {}) {
  const root = { cells: [], effects: [], index: 0, output: null, renders: 0, mounted: true };
  root.rerender = () => {
    if (!root.mounted) throw new Error("setState after unmount");
    current = root;
    root.index = 0;
    root.output = component(props);
    root.renders += 1;
    current = null;
    for (const effect of root.effects.splice(0)) effect();
  };
  root.unmount = () => {
    root.mounted = false;
    for (const cell of root.cells) if (cell && cell.cleanup) cell.cleanup();
  };
  root.rerender();
  return root;
}

function cell(init) {
  const root = current;
  const i = root.index++;
  if (!(i in root.cells)) root.cells[i] = init();
  return [root, root.cells[i]];
}

export function useState(initial) {
  const [root, c] = cell(() => ({ value: initial }));
  const set = (next) => {
    c.value = typeof next === "function" ? next(c.value) : next;
    root.rerender();
  };
  return [c.value, set];
}

export function useRef(initial) {
  return cell(() => ({ current: initial }))[1];
}

export function useCallback(fn) {
  return cell(() => ({ fn }))[1].fn;
}

export function useEffect(effect) {
  const [root, c] = cell(() => ({ ran: false }));
  if (!c.ran) {
    c.ran = true;
    root.effects.push(() => {
      c.cleanup = effect();
    });
  }
}
