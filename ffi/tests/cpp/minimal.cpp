// The README's minimal C++ program, compiled and run by tests/clients.rs.
#include <cstdio>

#include "ringxfer.hpp"

int main() {
  rx_config cfg = rx::Engine::default_config();
  rx::Engine a = rx::Engine::create(cfg).value(), b = rx::Engine::create(cfg).value();
  uint64_t src = a.alloc_region(4096).value(), dst = b.alloc_region(4096).value();
  uint32_t peer = a.load_peer(b.local_metadata().value()).value();
  rx_desc l{src, 0, 4096}, r{dst, 0, 4096};
  const uint8_t note[] = {'o', 'k'};
  auto t = a.prepare(rx::Op::Write, rx::Span<rx_desc>(&l, 1), peer, rx::Span<rx_desc>(&r, 1), note);
  if (!t) return std::fprintf(stderr, "%s\n", rx::last_error().c_str()), 1;
  rx::Transfer xfer = std::move(t).value();  // released when it goes out of scope
  if (!xfer.post() || xfer.wait(1000000).value().state != RX_XFER_DONE) return 1;
  std::printf("minimal.cpp: done\n");
  return 0;
}
