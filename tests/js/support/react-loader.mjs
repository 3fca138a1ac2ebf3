// Resolves the bare specifier "react" to the stand-in beside this file.
export async function resolve(specifier, context, next) {
  if (specifier === "react") {
    return { url: new URL("./fake-react.mjs", import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
