// One thread runs every OpenMP region of the core, whichever Python thread asked.
//
// libgomp keeps a worker pool per thread that starts parallel regions. Once two threads have
// pools, the process manages more OpenMP threads than it has CPUs, and libgomp's workers stop
// spinning between regions and sleep instead: a decode step, hundreds of short regions, then
// runs twice as slow (measured: 16 ms -> 31 ms per token on 2 cores when the engine thread
// forwards a model loaded by the main thread). Running every heavy call on this one thread keeps
// a single pool, so the engine thread, the main thread and any other caller get the fast path.
#pragma once

#include <functional>

namespace nlm {

// Runs f on the compute thread and waits for it; an exception f throws is rethrown here. Calls from
// several threads run one at a time; a call made on the compute thread itself runs directly.
void run_on_compute_thread(const std::function<void()>& f);

}  // namespace nlm
