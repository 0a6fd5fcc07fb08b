#include "common/memory.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <new>

namespace nlm {

Buffer alloc_buffer(size_t bytes, bool zeroed) {
    constexpr size_t kHuge = size_t(1) << 21;
    const size_t align = bytes >= kHuge ? kHuge : 64;
    if (bytes > SIZE_MAX - align) throw std::bad_alloc();
    const size_t size = (bytes + align - 1) / align * align;
    void* p = std::aligned_alloc(align, size == 0 ? align : size);
    if (p == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    // Before the first touch, so the pages are faulted in huge; a refusal only costs speed.
    if (align == kHuge) madvise(p, size, MADV_HUGEPAGE);
#endif
    if (zeroed) std::memset(p, 0, size);
    return Buffer(static_cast<uint8_t*>(p), std::free);
}

}  // namespace nlm
