// Loads the deltamesh wasm bundle in the dedicated worker and runs its half.
// The page posts its compiled module first (no second fetch or compile);
// the messages after it wait here until the worker's half runs.
import init, { workerMain } from "./deltamesh_worker.js";
const queued = [];
self.onmessage = async ({ data }) => {
    if (queued.push(data) > 1) return;
    await init({ module_or_path: data });
    workerMain(queued.slice(1));
};
