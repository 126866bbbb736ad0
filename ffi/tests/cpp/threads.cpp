// 4 threads post transfers (every 10th with a notification) into one peer while a 5th
// polls: pops notifications and reads stats. At the end nothing is live and every
// notification arrived exactly once.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "ringxfer.hpp"

#define EXPECT(cond)                                                                                       \
  do {                                                                                                     \
    if (!(cond)) {                                                                                         \
      std::fprintf(stderr, "%s:%d: expected %s (%s)\n", __FILE__, __LINE__, #cond, rx::last_error().c_str()); \
      std::exit(1);                                                                                        \
    }                                                                                                      \
  } while (0)

constexpr int kPosters = 4;
constexpr int kPerPoster = 5000;
constexpr uint64_t kBlock = 4096;

int main() {
  rx_config cfg = rx::Engine::default_config();
  cfg.capacity = 64;
  cfg.inbox_capacity = 16;
  cfg.name = "posters";
  rx::Engine a = rx::Engine::create(cfg).value();
  cfg.name = "target";
  rx::Engine b = rx::Engine::create(cfg).value();
  uint64_t src = a.alloc_region(kPosters * kBlock).value();
  uint64_t dst = b.alloc_region(kPosters * kBlock).value();
  uint32_t peer = a.load_peer(b.local_metadata().value()).value();

  std::atomic<int> posters_done{0};
  std::atomic<long> notifications_sent{0};
  long popped = 0;
  std::thread poller([&] {
    uint8_t buf[256];
    rx_notification n{};
    for (;;) {
      bool finished = posters_done.load() == kPosters;
      auto got = b.pop_notification(buf, sizeof buf, &n);
      EXPECT(got);
      if (got.value()) {
        popped++;
        continue;
      }
      EXPECT(a.stats());
      if (finished && popped == notifications_sent.load()) break;
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> posters;
  for (int p = 0; p < kPosters; p++) {
    posters.emplace_back([&, p] {
      rx_desc l{src, p * kBlock, kBlock}, r{dst, p * kBlock, kBlock};
      const uint8_t note[] = {'n'};
      for (int i = 0; i < kPerPoster; i++) {
        bool with_note = i % 10 == 0;
        for (;;) {
          auto t = with_note ? a.prepare(rx::Op::Write, rx::Span<rx_desc>(&l, 1), peer, rx::Span<rx_desc>(&r, 1), note)
                             : a.prepare(rx::Op::Write, rx::Span<rx_desc>(&l, 1), peer, rx::Span<rx_desc>(&r, 1));
          if (!t && t.status() == rx::Status::RingFull) {
            std::this_thread::yield();
            continue;
          }
          EXPECT(t);
          rx::Transfer transfer = std::move(t).value();
          auto posted = transfer.post();
          if (!posted && posted.status() == rx::Status::InboxFull) {
            std::this_thread::yield();  // the poller is behind; `transfer` is released here
            continue;
          }
          EXPECT(posted);
          EXPECT(transfer.wait(5000000).value().state == RX_XFER_DONE);
          if (with_note) notifications_sent++;
          break;
        }
      }
      posters_done++;
    });
  }
  for (auto &t : posters) t.join();
  poller.join();
  rx_stats st = a.stats().value();
  std::printf("threads.cpp: %llu done, %ld notifications, live %llu\n", static_cast<unsigned long long>(st.done), popped,
              static_cast<unsigned long long>(st.live));
  EXPECT(st.live == 0 && st.pins == 0 && st.done == kPosters * kPerPoster);
  EXPECT(popped == kPosters * kPerPoster / 10);
  return 0;
}
