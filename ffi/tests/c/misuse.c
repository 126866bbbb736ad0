/* The misuse suite: each named case must return its documented status, do nothing,
 * and leave the engine usable (checked by a real transfer after every case). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ringxfer.h"

static rx_engine *a, *b;
static uint64_t src, dst;
static uint32_t peer;
static int failures;

static void expect(const char *name, rx_status got, rx_status want) {
  if (got != want) {
    char msg[512];
    size_t n;
    rx_last_error(msg, sizeof msg, &n);
    fprintf(stderr, "case %s: got %s, want %s (%s)\n", name, rx_status_str(got), rx_status_str(want), msg);
    failures++;
  }
}

/* After every case: the engine still moves bytes and holds nothing. */
static void still_usable(const char *name) {
  rx_desc l = {src, 0, 64}, r = {dst, 0, 64};
  uint64_t h = 0;
  rx_xfer_status st;
  rx_stats stats;
  if (rx_prepare(a, RX_OP_WRITE, &l, 1, peer, &r, 1, NULL, 0, &h) != RX_OK || rx_post(a, h) != RX_OK ||
      rx_wait(a, h, 1000000, &st) != RX_OK || st.state != RX_XFER_DONE || rx_release(a, h) != RX_OK ||
      rx_engine_stats(a, &stats) != RX_OK || stats.live != 0 || stats.pins != 0) {
    fprintf(stderr, "case %s: engine not usable afterwards\n", name);
    failures++;
  } else {
    printf("case %s: ok\n", name);
  }
}

static uint64_t prepared(void) {
  rx_desc l = {src, 0, 64}, r = {dst, 0, 64};
  uint64_t h = 0;
  if (rx_prepare(a, RX_OP_WRITE, &l, 1, peer, &r, 1, NULL, 0, &h) != RX_OK) abort();
  return h;
}

int main(void) {
  rx_config cfg;
  rx_config_default(&cfg);
  cfg.capacity = 4;
  if (rx_engine_new(&cfg, &a) != RX_OK || rx_engine_new(&cfg, &b) != RX_OK) return 1;
  rx_alloc_region(a, 4096, &src);
  rx_alloc_region(b, 4096, &dst);
  uint8_t md[4096];
  size_t md_len;
  if (rx_local_metadata(b, md, sizeof md, &md_len) != RX_OK || rx_load_peer(a, md, md_len, &peer) != RX_OK) return 1;
  rx_desc l = {src, 0, 64}, r = {dst, 0, 64};
  uint64_t h, region;
  rx_xfer_status st;

  expect("null_engine", rx_post(NULL, 1), RX_INVALID_ARGUMENT);
  expect("null_engine_stats", rx_engine_stats(NULL, NULL), RX_INVALID_ARGUMENT);
  still_usable("null_engine");

  expect("null_out_engine", rx_engine_new(NULL, NULL), RX_INVALID_ARGUMENT);
  expect("null_out_region", rx_alloc_region(a, 64, NULL), RX_INVALID_ARGUMENT);
  expect("null_out_handle", rx_prepare(a, RX_OP_WRITE, &l, 1, peer, &r, 1, NULL, 0, NULL), RX_INVALID_ARGUMENT);
  expect("null_out_status", rx_get_status(a, 1, NULL), RX_INVALID_ARGUMENT);
  still_usable("null_out_pointers");

  expect("null_buffer_write", rx_write_region(a, src, 0, NULL, 10), RX_INVALID_ARGUMENT);
  expect("null_descs", rx_prepare(a, RX_OP_WRITE, NULL, 1, peer, &r, 1, NULL, 0, &h), RX_INVALID_ARGUMENT);
  expect("null_notification", rx_prepare(a, RX_OP_WRITE, &l, 1, peer, &r, 1, NULL, 5, &h), RX_INVALID_ARGUMENT);
  expect("null_blob", rx_load_peer(a, NULL, 10, &peer), RX_INVALID_ARGUMENT);
  still_usable("null_buffer_with_length");

  expect("handle_zero_post", rx_post(a, 0), RX_INVALID_HANDLE);
  expect("handle_zero_release", rx_release(a, 0), RX_INVALID_HANDLE);
  still_usable("handle_zero");

  h = prepared();
  expect("release", rx_release(a, h), RX_OK);
  expect("stale_post", rx_post(a, h), RX_STALE_HANDLE);
  expect("stale_status", rx_get_status(a, h, &st), RX_STALE_HANDLE);
  still_usable("stale_handle_after_release");

  h = prepared();
  expect("first_release", rx_release(a, h), RX_OK);
  expect("double_release", rx_release(a, h), RX_STALE_HANDLE);
  still_usable("double_release");

  uint64_t theirs;
  rx_alloc_region(b, 64, &region);
  rx_desc bl = {region, 0, 64};
  uint8_t amd[4096];
  size_t amd_len;
  uint32_t back;
  rx_local_metadata(a, amd, sizeof amd, &amd_len);
  rx_load_peer(b, amd, amd_len, &back);
  rx_desc ar = {src, 0, 64};
  if (rx_prepare(b, RX_OP_WRITE, &bl, 1, back, &ar, 1, NULL, 0, &theirs) != RX_OK) return 1;
  expect("foreign_post", rx_post(a, theirs), RX_STALE_HANDLE);
  expect("foreign_release", rx_release(a, theirs), RX_STALE_HANDLE);
  expect("owner_release", rx_release(b, theirs), RX_OK);
  still_usable("handle_from_another_engine");

  expect("op_out_of_range", rx_prepare(a, 7, &l, 1, peer, &r, 1, NULL, 0, &h), RX_INVALID_ARGUMENT);
  uint32_t cancel_result;
  h = prepared();
  expect("cancel", rx_cancel(a, h, &cancel_result), RX_OK);
  expect("cancel_result", cancel_result == RX_CANCEL_DONE ? RX_OK : RX_PANIC, RX_OK);
  expect("release_cancelled", rx_release(a, h), RX_OK);
  still_usable("invalid_enum_values");

  uint8_t big[300] = {0};
  expect("oversized_notification", rx_prepare(a, RX_OP_WRITE, &l, 1, peer, &r, 1, big, sizeof big, &h),
         RX_NOTIFICATION_TOO_LARGE);
  expect("oversized_notify", rx_notify(a, peer, big, sizeof big), RX_NOTIFICATION_TOO_LARGE);
  still_usable("oversized_notification");

  uint64_t held[4];
  for (int i = 0; i < 4; i++) held[i] = prepared();
  expect("ring_full", rx_prepare(a, RX_OP_WRITE, &l, 1, peer, &r, 1, NULL, 0, &h), RX_RING_FULL);
  for (int i = 0; i < 4; i++) expect("release_held", rx_release(a, held[i]), RX_OK);
  still_usable("capacity_exhausted");

  uint8_t small[8];
  rx_notification n;
  bool popped;
  expect("pop_small_buffer", rx_pop_notification(b, small, sizeof small, &n, &popped), RX_BUFFER_TOO_SMALL);
  expect("unknown_peer", rx_prepare(a, RX_OP_WRITE, &l, 1, 99, &r, 1, NULL, 0, &h), RX_UNKNOWN_PEER);
  expect("unload_unknown_peer", rx_unload_peer(a, 99), RX_UNKNOWN_PEER);
  uint32_t extra;
  if (rx_load_peer(b, amd, amd_len, &extra) != RX_OK) return 1;
  expect("unload_peer", rx_unload_peer(b, extra), RX_OK);
  expect("unloaded_peer_is_stale", rx_prepare(b, RX_OP_WRITE, &bl, 1, extra, &ar, 1, NULL, 0, &h), RX_UNKNOWN_PEER);
  expect("unload_twice", rx_unload_peer(b, extra), RX_UNKNOWN_PEER);
  still_usable("unload_peer");
  uint8_t garbage[32] = "definitely not metadata";
  expect("bad_metadata", rx_load_peer(a, garbage, sizeof garbage, &peer), RX_METADATA);
  rx_desc oob = {src, 4090, 64};
  expect("out_of_bounds", rx_prepare(a, RX_OP_WRITE, &oob, 1, peer, &r, 1, NULL, 0, &h), RX_OUT_OF_BOUNDS);
  rx_desc unknown = {12345, 0, 64};
  expect("unknown_region", rx_prepare(a, RX_OP_WRITE, &unknown, 1, peer, &r, 1, NULL, 0, &h), RX_UNKNOWN_REGION);
  h = prepared();
  expect("deregister_busy", rx_deregister(a, src), RX_BUSY);
  expect("release_busy", rx_release(a, h), RX_OK);
  char msg[512];
  size_t msg_len;
  expect("out_of_bounds_again", rx_prepare(a, RX_OP_WRITE, &oob, 1, peer, &r, 1, NULL, 0, &h), RX_OUT_OF_BOUNDS);
  expect("last_error", rx_last_error(msg, sizeof msg, &msg_len), RX_OK);
  expect("last_error_text", strstr(msg, "offset 4090") ? RX_OK : RX_PANIC, RX_OK);
  expect("last_error_zero_cap", rx_last_error(msg, 0, &msg_len), RX_INVALID_ARGUMENT);
  still_usable("other_errors");

  expect("file_null_path", rx_register_file(a, NULL, 0, 0, &region), RX_INVALID_ARGUMENT);
  expect("file_bad_flags", rx_register_file(a, "/tmp/x", 64, 0, &region), RX_INVALID_ARGUMENT);
  expect("file_missing", rx_register_file(a, "/nonexistent/ringxfer/file", 0, 0, &region), RX_IO);
  expect("file_directory", rx_register_file(a, "/tmp", 0, 0, &region), RX_INVALID_DESCRIPTOR);
  still_usable("bad_file_registrations");

  rx_config bad;
  rx_config_default(&bad);
  bad.capacity = 3;
  rx_engine *e = NULL;
  expect("invalid_config", rx_engine_new(&bad, &e), RX_INVALID_CONFIG);
  expect("invalid_config_no_output", e == NULL ? RX_OK : RX_PANIC, RX_OK);
  expect("unknown_status_str", strcmp(rx_status_str(999), "unknown status") == 0 ? RX_OK : RX_PANIC, RX_OK);
  still_usable("invalid_config");

  /* No CUDA driver on this machine: a typed status, never a crash. */
  rx_config gpu;
  rx_config_default(&gpu);
  gpu.cuda_flags = RX_CUDA_ENABLE;
  expect("cuda_no_driver", rx_engine_new(&gpu, &e), RX_CUDA_UNAVAILABLE);
  expect("cuda_no_driver_no_output", e == NULL ? RX_OK : RX_PANIC, RX_OK);
  expect("cuda_no_driver_text", rx_last_error(msg, sizeof msg, &msg_len) == RX_OK && strstr(msg, "libcuda") ? RX_OK : RX_PANIC, RX_OK);
  gpu.cuda_flags = 0x80;
  expect("cuda_bad_flags", rx_engine_new(&gpu, &e), RX_INVALID_ARGUMENT);
  expect("vram_without_cuda", rx_alloc_vram(a, 4096, &region), RX_CUDA_UNAVAILABLE);
  expect("register_vram_without_cuda", rx_register_vram(a, 0x1000, 4096, &region), RX_CUDA_UNAVAILABLE);
  expect("vram_null_out", rx_alloc_vram(a, 4096, NULL), RX_INVALID_ARGUMENT);
  still_usable("cuda_unavailable");

  rx_engine_free(a);
  rx_engine_free(b);
  if (failures) {
    fprintf(stderr, "misuse.c: %d failures\n", failures);
    return 1;
  }
  printf("misuse.c: every case returned its documented status\n");
  return 0;
}
