/* Two engines in one process: metadata exchange, a batch write with a notification,
 * a read back, a prepared list, a standalone notification, and the ledger at 0. */
#define _POSIX_C_SOURCE 200809L /* poll(2) under -std=c11 */
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ringxfer.h"

#define CHECK(call)                                                                    \
  do {                                                                                 \
    rx_status s_ = (call);                                                             \
    if (s_ != RX_OK) {                                                                 \
      char msg_[512];                                                                  \
      size_t n_;                                                                       \
      rx_last_error(msg_, sizeof msg_, &n_);                                           \
      fprintf(stderr, "%s:%d: %s -> %s (%s)\n", __FILE__, __LINE__, #call,             \
              rx_status_str(s_), msg_);                                                \
      exit(1);                                                                         \
    }                                                                                  \
  } while (0)

#define EXPECT(cond)                                                                   \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond);              \
      exit(1);                                                                         \
    }                                                                                  \
  } while (0)

/* Posts a prepared transfer, waits until it is DONE, and releases it. */
static void post_to_done(const rx_engine *e, uint64_t h) {
  rx_xfer_status st;
  CHECK(rx_post(e, h));
  CHECK(rx_wait(e, h, 5000000, &st));
  EXPECT(st.state == RX_XFER_DONE);
  CHECK(rx_release(e, h));
}

enum { BLOCK = 4096, BLOCKS = 8 };

int main(void) {
  rx_config cfg;
  CHECK(rx_config_default(&cfg));
  cfg.name = "prefill";
  rx_engine *a = NULL;
  CHECK(rx_engine_new(&cfg, &a));
  cfg.name = "decode";
  rx_engine *b = NULL;
  CHECK(rx_engine_new(&cfg, &b));

  uint64_t src, back, dst;
  CHECK(rx_alloc_region(a, BLOCK * BLOCKS, &src));
  CHECK(rx_alloc_region(a, BLOCK * BLOCKS, &back));
  CHECK(rx_alloc_region(b, BLOCK * BLOCKS, &dst));
  unsigned char pattern[BLOCK * BLOCKS];
  for (size_t i = 0; i < sizeof pattern; i++) pattern[i] = (unsigned char)(i * 31 + 7);
  CHECK(rx_write_region(a, src, 0, pattern, sizeof pattern));

  /* Metadata: ask for the size, then fetch. */
  size_t md_len = 0;
  EXPECT(rx_local_metadata(b, NULL, 0, &md_len) == RX_BUFFER_TOO_SMALL && md_len > 0);
  unsigned char *md = malloc(md_len);
  CHECK(rx_local_metadata(b, md, md_len, &md_len));
  uint32_t peer;
  CHECK(rx_load_peer(a, md, md_len, &peer));
  free(md);

  rx_desc local[BLOCKS], remote[BLOCKS];
  for (uint64_t i = 0; i < BLOCKS; i++) {
    local[i] = (rx_desc){src, i * BLOCK, BLOCK};
    remote[i] = (rx_desc){dst, (BLOCKS - 1 - i) * BLOCK, BLOCK};
  }
  const char note[] = "8 blocks ready";
  uint64_t h;
  CHECK(rx_prepare(a, RX_OP_WRITE, local, BLOCKS, peer, remote, BLOCKS, (const uint8_t *)note,
                   strlen(note), &h));
  post_to_done(a, h);
  rx_xfer_status st;

  uint8_t buf[256];
  rx_notification n;
  bool popped = false;
  CHECK(rx_pop_notification(b, buf, sizeof buf, &n, &popped));
  EXPECT(popped && n.len == strlen(note) && memcmp(buf, note, n.len) == 0 && n.handle == h);

  /* Read everything back (remote order reversed again). */
  for (uint64_t i = 0; i < BLOCKS; i++) local[i].region = back;
  CHECK(rx_prepare(a, RX_OP_READ, local, BLOCKS, peer, remote, BLOCKS, NULL, 0, &h));
  post_to_done(a, h);
  unsigned char out[BLOCK * BLOCKS];
  CHECK(rx_read_region(a, back, 0, out, sizeof out));
  EXPECT(memcmp(out, pattern, sizeof out) == 0);

  /* A block transfer: the source's blocks 7..0 (indexed) into the peer's blocks
     0..7 (strided), read back in order: the blocks come back reversed. */
  const uint32_t reversed[BLOCKS] = {7, 6, 5, 4, 3, 2, 1, 0};
  rx_blocks from = {src, 0, BLOCK, BLOCK, reversed, BLOCKS};
  rx_blocks into = {dst, 0, BLOCK, BLOCK, NULL, BLOCKS};
  CHECK(rx_prepare_blocks(a, RX_OP_WRITE, &from, 1, peer, &into, 1, NULL, 0, &h));
  post_to_done(a, h);
  rx_blocks home = {back, 0, BLOCK, BLOCK, NULL, BLOCKS};
  CHECK(rx_prepare_blocks(a, RX_OP_READ, &home, 1, peer, &into, 1, NULL, 0, &h));
  post_to_done(a, h);
  CHECK(rx_read_region(a, back, 0, out, sizeof out));
  for (int k = 0; k < BLOCKS; k++) EXPECT(memcmp(out + k * BLOCK, pattern + (BLOCKS - 1 - k) * BLOCK, BLOCK) == 0);
  /* Pairs of unequal counts are refused, and hold nothing. */
  into.count = 3;
  EXPECT(rx_prepare_blocks(a, RX_OP_WRITE, &from, 1, peer, &into, 1, NULL, 0, &h) == RX_LENGTH_MISMATCH);

  /* A prepared list posted many times, each with a fresh handle. */
  uint64_t list, prev = 0;
  CHECK(rx_prepare_list(a, RX_OP_WRITE, local, 1, peer, remote, 1, &list));
  for (int i = 0; i < 100; i++) {
    CHECK(rx_post_list(a, list, NULL, 0, &h));
    EXPECT(h != prev);
    prev = h;
    size_t completed;
    CHECK(rx_progress(a, &completed));
    CHECK(rx_wait(a, h, 5000000, &st));
    EXPECT(st.state == RX_XFER_DONE);
    CHECK(rx_release(a, h));
  }
  CHECK(rx_release_list(a, list));

  /* A list over every block, posted two entries at a time by index: back's blocks 6
     and 1 read from the peer's blocks 1 and 6 (which hold the source's 6 and 1). */
  rx_desc home_descs[BLOCKS];
  for (uint64_t i = 0; i < BLOCKS; i++) home_descs[i] = (rx_desc){back, i * BLOCK, BLOCK};
  CHECK(rx_prepare_list(a, RX_OP_READ, home_descs, BLOCKS, peer, remote, BLOCKS, &list));
  static const unsigned char zeros[BLOCK * BLOCKS];
  CHECK(rx_write_region(a, back, 0, zeros, sizeof zeros));
  const uint32_t pick[2] = {6, 1};
  CHECK(rx_post_list_indices(a, list, pick, 2, NULL, 0, &h));
  CHECK(rx_wait(a, h, 5000000, &st));
  EXPECT(st.state == RX_XFER_DONE);
  CHECK(rx_release(a, h));
  CHECK(rx_read_region(a, back, 0, out, sizeof out));
  EXPECT(memcmp(out + 6 * BLOCK, pattern + 6 * BLOCK, BLOCK) == 0);
  EXPECT(memcmp(out + 1 * BLOCK, pattern + 1 * BLOCK, BLOCK) == 0);
  EXPECT(memcmp(out, zeros, BLOCK) == 0);
  const uint32_t past[1] = {BLOCKS};
  EXPECT(rx_post_list_indices(a, list, past, 1, NULL, 0, &h) == RX_INVALID_DESCRIPTOR);
  EXPECT(rx_post_list_indices(a, list, NULL, 1, NULL, 0, &h) == RX_INVALID_ARGUMENT);
  CHECK(rx_release_list(a, list));

  CHECK(rx_notify(a, peer, (const uint8_t *)"bye", 3));
  CHECK(rx_pop_notification(b, buf, sizeof buf, &n, &popped));
  EXPECT(popped && n.len == 3);
  CHECK(rx_pop_notification(b, buf, sizeof buf, &n, &popped));
  EXPECT(!popped);

  /* Metadata over TCP on loopback. */
  rx_metadata_server *server = NULL;
  CHECK(rx_serve_metadata(b, "127.0.0.1:0", &server));
  char addr[64];
  CHECK(rx_metadata_server_addr(server, addr, sizeof addr));
  uint32_t again;
  CHECK(rx_fetch_peer(a, addr, &again));
  EXPECT(again == peer);
  rx_metadata_server_free(server);

  /* A file, registered once: memory -> file -> memory through the engine itself. */
  char path[128];
  snprintf(path, sizeof path, "/tmp/ringxfer-c-file-%ld.bin", (long)rx_version() ^ (long)(uintptr_t)&path);
  uint64_t file;
  CHECK(rx_register_file(a, path, RX_FILE_WRITABLE | RX_FILE_CREATE, 1 << 20, &file));
  rx_desc mem = {src, 0, BLOCK}, in_file = {file, 12345, BLOCK}, mem_back = {back, 0, BLOCK};
  CHECK(rx_prepare(a, RX_OP_WRITE, &mem, 1, RX_PEER_SELF, &in_file, 1, NULL, 0, &h));
  post_to_done(a, h);
  CHECK(rx_prepare(a, RX_OP_READ, &mem_back, 1, RX_PEER_SELF, &in_file, 1, NULL, 0, &h));
  post_to_done(a, h);
  CHECK(rx_read_region(a, back, 0, out, BLOCK));
  EXPECT(memcmp(out, pattern, BLOCK) == 0);

  /* The completion queue: file transfers on the I/O workers, reported with their
   * tags; the eventfd wakes a caller sleeping in poll(2), and polling clears it. */
  int cfd = -1;
  CHECK(rx_completion_fd(a, &cfd));
  EXPECT(cfd >= 0);
  size_t count = 0;
  CHECK(rx_poll_completions(a, NULL, 0, &count)); /* clears the first call's wake-up */
  struct pollfd pfd = {cfd, POLLIN, 0};
  EXPECT(poll(&pfd, 1, 0) == 0);
  uint64_t hs[4];
  for (int i = 0; i < 4; i++) {
    rx_desc m = {src, (uint64_t)i * BLOCK, BLOCK}, f = {file, (uint64_t)i * BLOCK, BLOCK};
    CHECK(rx_prepare(a, RX_OP_WRITE, &m, 1, RX_PEER_SELF, &f, 1, NULL, 0, &hs[i]));
    CHECK(rx_report_completion(a, hs[i], 40 + i));
    CHECK(rx_post(a, hs[i]));
  }
  rx_completion done[8];
  size_t seen = 0;
  while (seen < 4) {
    EXPECT(poll(&pfd, 1, 5000) == 1);
    CHECK(rx_poll_completions(a, done + seen, 8 - seen, &count));
    seen += count;
  }
  EXPECT(seen == 4);
  for (size_t i = 0; i < seen; i++) {
    EXPECT(done[i].status.state == RX_XFER_DONE && done[i].tag >= 40 && done[i].tag < 44);
    EXPECT(done[i].handle == hs[done[i].tag - 40]);
    CHECK(rx_release(a, done[i].handle));
  }
  EXPECT(poll(&pfd, 1, 0) == 0);
  bool ready = true;
  CHECK(rx_wait_any(a, 1000, &ready));
  EXPECT(!ready);
  /* A prepared transfer cancelled is reported CANCELLED. */
  CHECK(rx_prepare(a, RX_OP_WRITE, &mem, 1, RX_PEER_SELF, &in_file, 1, NULL, 0, &h));
  CHECK(rx_report_completion(a, h, 7));
  uint32_t cancel_result;
  CHECK(rx_cancel(a, h, &cancel_result));
  EXPECT(cancel_result == RX_CANCEL_DONE);
  CHECK(rx_wait_any(a, 1000000, &ready));
  EXPECT(ready);
  CHECK(rx_poll_completions(a, done, 8, &count));
  EXPECT(count == 1 && done[0].handle == h && done[0].tag == 7 && done[0].status.state == RX_XFER_CANCELLED);
  CHECK(rx_release(a, h));

  CHECK(rx_deregister(a, file));
  remove(path);

  rx_stats stats;
  CHECK(rx_engine_stats(a, &stats));
  EXPECT(stats.live == 0 && stats.pins == 0 && stats.acquired == stats.freed);
  EXPECT(stats.done == 112 && stats.cancelled == 1 && stats.open_files == 0);
  EXPECT(stats.bytes > 0 && stats.cuda_events == 0 && stats.notifications[0] == 0);
  CHECK(rx_check_quiescent(a));
  /* A transfer prepared and not released: not quiescent, and the error says so. */
  CHECK(rx_prepare(a, RX_OP_WRITE, local, 1, peer, remote, 1, NULL, 0, &h));
  EXPECT(rx_check_quiescent(a) == RX_NOT_QUIESCENT);
  char why[256];
  size_t why_len = 0;
  rx_last_error(why, sizeof why, &why_len);
  EXPECT(strstr(why, "slot") != NULL);
  CHECK(rx_release(a, h));
  CHECK(rx_check_quiescent(a));
  /* The counters as Prometheus text: a short buffer is told the length it needs. */
  char small[16];
  size_t need = 0, got = 0;
  EXPECT(rx_metrics(a, (uint8_t *)small, sizeof small, &need) == RX_BUFFER_TOO_SMALL && need > sizeof small);
  char *text = malloc(need + 1);
  CHECK(rx_metrics(a, (uint8_t *)text, need, &got));
  EXPECT(got == need);
  text[got] = 0;
  EXPECT(strstr(text, "ringxfer_transfers_total{engine=\"prefill\",outcome=\"done\"} 112") != NULL);
  free(text);
  EXPECT(rx_metrics(a, NULL, 0, NULL) == RX_INVALID_ARGUMENT);
  printf("transfer.c: %llu transfers done, live %llu\n", (unsigned long long)stats.done,
         (unsigned long long)stats.live);
  rx_engine_free(a);
  rx_engine_free(b);
  rx_engine_free(NULL);
  return 0;
}
