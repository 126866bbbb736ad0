/* The fabric transport through the C API: two engines in one process over a real
 * libfabric provider (argv[1]: "tcp" or "shm"), a scattered write with a
 * notification, a read back, the ledger at 0. With argv[1] = "unavailable" (the test
 * points RINGXFER_LIBFABRIC at a missing file), creating a fabric engine must fail
 * with RX_FABRIC_UNAVAILABLE and an install hint, and nothing else breaks. */
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

enum { BLOCK = 65536, BLOCKS = 8 };

static int unavailable(void) {
  rx_config cfg;
  CHECK(rx_config_default(&cfg));
  cfg.fabric_flags = RX_FABRIC_ENABLE;
  rx_engine *e = NULL;
  EXPECT(rx_engine_new(&cfg, &e) == RX_FABRIC_UNAVAILABLE && e == NULL);
  char msg[512];
  size_t n;
  CHECK(rx_last_error(msg, sizeof msg, &n));
  EXPECT(strstr(msg, "libfabric") != NULL && strstr(msg, "install") != NULL);
  /* Unknown flags are refused; an engine without the fabric still works. */
  cfg.fabric_flags = 8;
  EXPECT(rx_engine_new(&cfg, &e) == RX_INVALID_ARGUMENT);
  cfg.fabric_flags = 0;
  CHECK(rx_engine_new(&cfg, &e));
  rx_engine_free(e);
  printf("fabric unavailable: %s\n", msg);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  if (strcmp(argv[1], "unavailable") == 0) return unavailable();

  rx_config cfg;
  CHECK(rx_config_default(&cfg));
  cfg.capacity = 64;
  cfg.fabric_flags = RX_FABRIC_ENABLE;
  cfg.fabric_provider = argv[1];
  cfg.name = "prefill";
  rx_engine *a = NULL;
  CHECK(rx_engine_new(&cfg, &a));
  cfg.name = "decode";
  cfg.fabric_flags = RX_FABRIC_ENABLE | RX_FABRIC_PROGRESS_THREAD;
  rx_engine *b = NULL;
  CHECK(rx_engine_new(&cfg, &b));

  uint64_t src, back, dst;
  CHECK(rx_alloc_region(a, BLOCK * BLOCKS, &src));
  CHECK(rx_alloc_region(a, BLOCK * BLOCKS, &back));
  CHECK(rx_alloc_region(b, BLOCK * BLOCKS, &dst));
  static unsigned char pattern[BLOCK * BLOCKS], out[BLOCK * BLOCKS];
  for (size_t i = 0; i < sizeof pattern; i++) pattern[i] = (unsigned char)(i * 31 + 7);
  CHECK(rx_write_region(a, src, 0, pattern, sizeof pattern));

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
  const char note[] = "8 blocks over the fabric";
  uint64_t h;
  CHECK(rx_prepare(a, RX_OP_WRITE, local, BLOCKS, peer, remote, BLOCKS, (const uint8_t *)note,
                   strlen(note), &h));
  CHECK(rx_post(a, h));
  rx_xfer_status st;
  CHECK(rx_wait(a, h, 10000000, &st));
  EXPECT(st.state == RX_XFER_DONE);
  CHECK(rx_release(a, h));

  /* The notification arrives only after every block landed. */
  uint8_t buf[256];
  rx_notification n;
  bool popped = false;
  for (int tries = 0; !popped && tries < 1000000; tries++) {
    size_t handled;
    CHECK(rx_progress(a, &handled));
    CHECK(rx_pop_notification(b, buf, sizeof buf, &n, &popped));
  }
  EXPECT(popped && n.len == strlen(note) && memcmp(buf, note, n.len) == 0 && n.handle == h);
  CHECK(rx_read_region(b, dst, 0, out, sizeof out));
  for (uint64_t i = 0; i < BLOCKS; i++)
    EXPECT(memcmp(out + (BLOCKS - 1 - i) * BLOCK, pattern + i * BLOCK, BLOCK) == 0);

  for (uint64_t i = 0; i < BLOCKS; i++) local[i].region = back;
  CHECK(rx_prepare(a, RX_OP_READ, local, BLOCKS, peer, remote, BLOCKS, NULL, 0, &h));
  CHECK(rx_post(a, h));
  CHECK(rx_wait(a, h, 10000000, &st));
  EXPECT(st.state == RX_XFER_DONE);
  CHECK(rx_release(a, h));
  CHECK(rx_read_region(a, back, 0, out, sizeof out));
  EXPECT(memcmp(out, pattern, sizeof out) == 0);

  rx_stats stats;
  CHECK(rx_engine_stats(a, &stats));
  EXPECT(stats.live == 0 && stats.pins == 0 && stats.acquired == stats.freed && stats.failed == 0);
  rx_engine_free(a);
  rx_engine_free(b);
  printf("fabric %s: ok\n", argv[1]);
  return 0;
}
