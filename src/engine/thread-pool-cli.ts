/**
 * Builds the engine's thread pool library now, where the service would
 * build it on its first start: for an image built with a compiler that runs
 * without one (deploy/Dockerfile). `npm run build:thread-pool`; prints the
 * library's path.
 */
import { threadPoolLibrary } from "./thread-pool.js";

const library = await threadPoolLibrary();
if ("path" in library) {
  console.log(library.path);
} else {
  console.error(`the thread pool library was not built: ${library.reason}`);
  process.exit(1);
}
