// Loads the deltamesh wasm bundle in the dedicated worker and runs its half.
import init, { workerMain } from "./deltamesh_worker.js";
await init();
workerMain();
