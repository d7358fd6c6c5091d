#pragma once
// A stackful coroutine on its own lazily committed stack (ucontext): the server runs each connection's blocking-style
// Session on one, and a reactor thread switches between thousands of them, so waiting costs stack pages, not threads.
// Rule for code running on a fiber: never yield inside a catch handler (the C++ runtime keeps the exceptions being
// handled in a per-thread list, which another fiber on the thread would then interleave).
// Why glibc's ucontext and not Boost.Context: the sanitizer annotations around each switch (the suite runs under
// ASan) need Boost's ucontext variant (BOOST_USE_UCONTEXT + BOOST_USE_ASAN), which every user of Debian's Boost
// headers in the process would have to be built with; this class is that variant's small core and nothing more.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <new>
#include <utility>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define DESKFARM_FIBER_ASAN 1
#endif

namespace deskfarm::nbd::detail {

class Fiber {
 public:
  /// Reserves `stack_size` bytes of address space (plus a guard page below it); pages are committed only when touched.
  /// Throws std::bad_alloc if the mapping fails. `body` must not let an exception escape (it would end the process).
  Fiber(std::function<void()> body, std::size_t stack_size) : body_(std::move(body)) {
    page_ = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    size_ = (stack_size + page_ - 1) / page_ * page_;
    void* p = ::mmap(nullptr, size_ + page_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                     -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    map_ = static_cast<std::byte*>(p);
    ::mprotect(map_, page_, PROT_NONE);  // an overflow faults instead of writing into a neighbour's stack
    ::getcontext(&context_);
    context_.uc_stack.ss_sp = map_ + page_;
    context_.uc_stack.ss_size = size_;
    context_.uc_link = nullptr;
    const auto self = reinterpret_cast<std::uintptr_t>(this);
    ::makecontext(&context_, reinterpret_cast<void (*)()>(&Fiber::entry), 2, static_cast<unsigned>(self >> 32),
                  static_cast<unsigned>(self & 0xffffffffU));
  }
  ~Fiber() { ::munmap(map_, size_ + page_); }
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;

  /// From the owning thread: runs the fiber until it yields or its body returns.
  void resume() {
#ifdef DESKFARM_FIBER_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, map_ + page_, size_);
    ::swapcontext(&caller_, &context_);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    ::swapcontext(&caller_, &context_);
#endif
  }

  /// From inside the fiber: back to whoever called resume().
  void yield() {
#ifdef DESKFARM_FIBER_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, caller_bottom_, caller_size_);
    ::swapcontext(&context_, &caller_);
    __sanitizer_finish_switch_fiber(fake, &caller_bottom_, &caller_size_);
#else
    ::swapcontext(&context_, &caller_);
#endif
  }

  bool finished() const { return finished_; }

  /// From inside the fiber: gives back the stack pages below the current frame (touched by deeper calls earlier:
  /// a TLS handshake, an export read), so a parked connection keeps only the frames it is parked in.
  void trim_stack() {
    std::byte here{};
    const auto sp = reinterpret_cast<std::uintptr_t>(&here);
    const auto low = reinterpret_cast<std::uintptr_t>(map_ + page_);
    // A margin for the frames of madvise itself and of the switch that follows.
    const std::uintptr_t keep_from = (sp - 8192) & ~(std::uintptr_t{page_} - 1);
    if (keep_from > low) ::madvise(reinterpret_cast<void*>(low), keep_from - low, MADV_DONTNEED);
  }

 private:
  static void entry(unsigned high, unsigned low) {
    auto* self = reinterpret_cast<Fiber*>((static_cast<std::uintptr_t>(high) << 32) | low);
#ifdef DESKFARM_FIBER_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &self->caller_bottom_, &self->caller_size_);
#endif
    self->body_();
    self->body_ = nullptr;  // what it captured goes now, on this stack, not when the fiber is destroyed
    self->finished_ = true;
#ifdef DESKFARM_FIBER_ASAN
    __sanitizer_start_switch_fiber(nullptr, self->caller_bottom_, self->caller_size_);
#endif
    ::setcontext(&self->caller_);
  }

  std::function<void()> body_;
  std::byte* map_ = nullptr;
  std::size_t size_ = 0;
  std::size_t page_ = 4096;
  ucontext_t context_{};
  ucontext_t caller_{};
  bool finished_ = false;
#ifdef DESKFARM_FIBER_ASAN
  const void* caller_bottom_ = nullptr;
  std::size_t caller_size_ = 0;
#endif
};

}  // namespace deskfarm::nbd::detail
