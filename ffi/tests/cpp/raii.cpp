// rx::Engine and rx::Transfer: RAII release, moves, exception-free results.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ringxfer.hpp"

#define EXPECT(cond)                                                        \
  do {                                                                      \
    if (!(cond)) {                                                          \
      std::fprintf(stderr, "%s:%d: expected %s (%s)\n", __FILE__, __LINE__, \
                   #cond, rx::last_error().c_str());                        \
      std::exit(1);                                                         \
    }                                                                       \
  } while (0)

int main() {
  rx_config cfg = rx::Engine::default_config();
  cfg.name = "prefill";
  auto a = rx::Engine::create(cfg);
  cfg.name = "decode";
  auto b = rx::Engine::create(cfg);
  EXPECT(a && b);
  rx::Engine prefill = std::move(a).value();
  rx::Engine decode = std::move(b).value();

  uint64_t src = prefill.alloc_region(1 << 16).value();
  uint64_t dst = decode.alloc_region(1 << 16).value();
  std::vector<uint8_t> data(1 << 16);
  for (size_t i = 0; i < data.size(); i++) data[i] = static_cast<uint8_t>(i * 13);
  EXPECT(prefill.write_region(src, 0, data.data(), data.size()));

  auto md = decode.local_metadata();
  EXPECT(md);
  uint32_t peer = prefill.load_peer(md.value()).value();

  std::vector<rx_desc> local, remote;
  for (uint64_t i = 0; i < 16; i++) {
    local.push_back(rx_desc{src, i * 4096, 4096});
    remote.push_back(rx_desc{dst, i * 4096, 4096});
  }
  const uint8_t note[] = {'k', 'v'};
  {
    auto t = prefill.prepare(rx::Op::Write, local, peer, remote, note);
    EXPECT(t);
    rx::Transfer moved = std::move(t).value();
    EXPECT(moved.post());
    auto st = moved.wait(1000000);
    EXPECT(st && st.value().state == RX_XFER_DONE);
    // `moved` releases its handle here.
  }
  EXPECT(prefill.stats().value().live == 0);

  std::vector<uint8_t> out(data.size());
  EXPECT(decode.read_region(dst, 0, out.data(), out.size()));
  EXPECT(out == data);
  uint8_t buf[256];
  rx_notification n{};
  auto popped = decode.pop_notification(buf, sizeof buf, &n);
  EXPECT(popped && popped.value() && n.len == 2 && std::memcmp(buf, "kv", 2) == 0);

  // A moved-from Transfer does nothing; an explicit release leaves nothing to release.
  auto t = prefill.prepare(rx::Op::Read, local, peer, remote);
  EXPECT(t);
  rx::Transfer first = std::move(t).value();
  rx::Transfer second(std::move(first));
  EXPECT(first.handle() == 0 && second.handle() != 0);
  EXPECT(prefill.stats().value().live == 1);
  EXPECT(second.release());
  EXPECT(second.release().status() == rx::Status::InvalidHandle);
  EXPECT(prefill.stats().value().live == 0);

  // Errors come back as statuses, never as exceptions.
  rx_desc oob{src, (1 << 16) - 10, 4096};
  auto bad = prefill.prepare(rx::Op::Write, rx::Span<rx_desc>(&oob, 1), peer, rx::Span<rx_desc>(&remote[0], 1));
  EXPECT(!bad && bad.status() == rx::Status::OutOfBounds);
  EXPECT(rx::last_error().find("out of bounds") != std::string::npos);
  EXPECT(std::string(rx::to_string(rx::Status::RingFull)).find("slots") != std::string::npos);

  // Cancel and deadlines: a local copy ends inside post, so its cancel finds it
  // complete; a zero deadline on a transfer that ends in post changes nothing.
  {
    auto c = prefill.prepare(rx::Op::Write, local, peer, remote);
    EXPECT(c);
    rx::Transfer x = std::move(c).value();
    EXPECT(x.set_deadline(0));
    EXPECT(x.post());
    auto r = x.cancel();
    EXPECT(r && r.value() == RX_CANCEL_ALREADY_COMPLETE);
    EXPECT(x.wait(1000000).value().state == RX_XFER_DONE);
    // A prepared transfer's cancel ends it at once.
    auto p2 = prefill.prepare(rx::Op::Write, local, peer, remote);
    rx::Transfer y = std::move(p2).value();
    EXPECT(y.cancel().value() == RX_CANCEL_DONE);
    EXPECT(y.status().value().state == RX_XFER_CANCELLED);
    // Held handles: not quiescent, and the error says what is held.
    auto q = prefill.check_quiescent();
    EXPECT(!q && q.status() == rx::Status::NotQuiescent);
    EXPECT(rx::last_error().find("slot") != std::string::npos);
  }
  // The completion queue: handles detached from their Transfer, released by the
  // poller once reported.
  for (uint64_t i = 0; i < 3; i++) {
    auto c = prefill.prepare(rx::Op::Write, local, peer, remote);
    rx::Transfer x = std::move(c).value();
    EXPECT(x.report_completion(100 + i));
    EXPECT(x.post());
    x.detach();
  }
  {
    rx_completion done[4];
    size_t seen = 0;
    while (seen < 3) {
      EXPECT(prefill.wait_any(1000000).value());
      seen += prefill.poll_completions(done + seen, 4 - seen).value();
    }
    for (size_t i = 0; i < seen; i++) {
      EXPECT(done[i].status.state == RX_XFER_DONE && done[i].tag >= 100 && done[i].tag < 103);
      EXPECT(prefill.release_handle(done[i].handle));
    }
    EXPECT(prefill.completion_fd().value() >= 0);
  }
  EXPECT(prefill.progress());
  EXPECT(prefill.poll_completions(nullptr, 0));
  EXPECT(prefill.check_quiescent());
  auto metrics = prefill.metrics();
  EXPECT(metrics && metrics.value().find("ringxfer_") != std::string::npos);
  EXPECT(decode.check_quiescent());

  auto stats = prefill.stats().value();
  std::printf("raii.cpp: %llu done, live %llu, pins %llu\n", static_cast<unsigned long long>(stats.done),
              static_cast<unsigned long long>(stats.live), static_cast<unsigned long long>(stats.pins));
  EXPECT(stats.live == 0 && stats.pins == 0 && stats.acquired == stats.freed);
  return 0;
}
