#include "common/memory.h"

#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <cstring>
#include <new>

namespace nlm {

Buffer alloc_buffer(size_t bytes, const char* what, bool zeroed) {
    constexpr size_t kHuge = size_t(1) << 21;
    const size_t align = bytes >= kHuge ? kHuge : 64;
    void* p = nullptr;
    size_t size = 0;
    if (bytes <= SIZE_MAX - align) {
        size = (bytes + align - 1) / align * align;
        p = std::aligned_alloc(align, size == 0 ? align : size);
    }
    if (p == nullptr) {
        char gib[32];
        std::snprintf(gib, sizeof gib, "%.2f", double(bytes) / double(size_t(1) << 30));
        throw OutOfMemory(std::string("cannot allocate ") + gib + " GiB (" + std::to_string(bytes) + " bytes) for " + what);
    }
#ifdef MADV_HUGEPAGE
    // Before the first touch, so the pages are faulted in huge; a refusal only costs speed.
    if (align == kHuge) madvise(p, size, MADV_HUGEPAGE);
#endif
    if (zeroed) std::memset(p, 0, size);
    return Buffer(static_cast<uint8_t*>(p), std::free);
}

}  // namespace nlm
