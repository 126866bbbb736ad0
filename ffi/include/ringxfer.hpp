// ringxfer: a header-only C++17 layer over the C API (ringxfer.h).
//
// - rx::Engine owns an rx_engine (freed in its destructor); rx::Transfer owns a
//   transfer handle and releases it in its destructor. Both are move-only; a
//   moved-from object owns nothing and its destructor does nothing.
// - Nothing throws: every fallible call returns rx::Result<T>, which holds either a
//   value or an rx::Status. rx::last_error() gives the calling thread's last failure.
// - rx::Span<T> is a (pointer, length) view for descriptor lists and payloads.
//
// The thread-safety contract is ringxfer.h's: an Engine may be used from any number of
// threads; a Transfer is one handle and should be used (and destroyed) by one thread
// at a time, like any handle.
#ifndef RINGXFER_HPP
#define RINGXFER_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ringxfer.h"

namespace rx {

/// Every rx_status, as an enum class.
enum class Status : uint32_t {
  Ok = RX_OK,
  InvalidArgument = RX_INVALID_ARGUMENT,
  RingFull = RX_RING_FULL,
  StaleHandle = RX_STALE_HANDLE,
  InvalidHandle = RX_INVALID_HANDLE,
  WrongState = RX_WRONG_STATE,
  InvalidConfig = RX_INVALID_CONFIG,
  InvalidDescriptor = RX_INVALID_DESCRIPTOR,
  UnknownRegion = RX_UNKNOWN_REGION,
  OutOfBounds = RX_OUT_OF_BOUNDS,
  Busy = RX_BUSY,
  RegistryFull = RX_REGISTRY_FULL,
  OutOfMemory = RX_OUT_OF_MEMORY,
  LengthMismatch = RX_LENGTH_MISMATCH,
  TooManyDescriptors = RX_TOO_MANY_DESCRIPTORS,
  UnknownPeer = RX_UNKNOWN_PEER,
  PeerTableFull = RX_PEER_TABLE_FULL,
  UnknownList = RX_UNKNOWN_LIST,
  ListTableFull = RX_LIST_TABLE_FULL,
  NotificationTooLarge = RX_NOTIFICATION_TOO_LARGE,
  InboxFull = RX_INBOX_FULL,
  BufferTooSmall = RX_BUFFER_TOO_SMALL,
  Metadata = RX_METADATA,
  PeerUnreachable = RX_PEER_UNREACHABLE,
  PeerLost = RX_PEER_LOST,
  Io = RX_IO,
  Timeout = RX_TIMEOUT,
  Unsupported = RX_UNSUPPORTED,
  Panic = RX_PANIC,
  FabricUnavailable = RX_FABRIC_UNAVAILABLE,
  Fabric = RX_FABRIC,
  CudaUnavailable = RX_CUDA_UNAVAILABLE,
  Cuda = RX_CUDA,
  NotQuiescent = RX_NOT_QUIESCENT,
  CompletionQueueFull = RX_COMPLETION_QUEUE_FULL,
  MetadataStore = RX_METADATA_STORE,
  NameTaken = RX_NAME_TAKEN,
};

/// A static description of a status.
inline const char *to_string(Status s) { return rx_status_str(static_cast<uint32_t>(s)); }

/// The calling thread's last failure, in detail (control path: allocates a string).
inline std::string last_error() {
  char buf[512];
  size_t len = 0;
  if (rx_last_error(buf, sizeof buf, &len) != RX_OK) return std::string();
  return std::string(buf, len);
}

/// A value or a failure status; never throws.
template <class T>
class Result {
 public:
  Result(T value) : status_(Status::Ok), value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(status), value_() {}                // NOLINT: implicit by design
  bool ok() const { return status_ == Status::Ok; }
  explicit operator bool() const { return ok(); }
  Status status() const { return status_; }
  /// The value; only meaningful when ok().
  T &value() & { return value_; }
  const T &value() const & { return value_; }
  T &&value() && { return std::move(value_); }

 private:
  Status status_;
  T value_;
};

/// A success or a failure status; never throws.
template <>
class Result<void> {
 public:
  Result() : status_(Status::Ok) {}
  Result(Status status) : status_(status) {}  // NOLINT: implicit by design
  bool ok() const { return status_ == Status::Ok; }
  explicit operator bool() const { return ok(); }
  Status status() const { return status_; }

 private:
  Status status_;
};

inline Status from_c(rx_status s) { return static_cast<Status>(s); }

/// A view of `len` elements at `ptr` (no ownership).
template <class T>
class Span {
 public:
  constexpr Span() = default;
  constexpr Span(const T *ptr, size_t len) : ptr_(ptr), len_(len) {}
  template <size_t N>
  constexpr Span(const T (&array)[N]) : ptr_(array), len_(N) {}  // NOLINT: implicit by design
  template <size_t N>
  constexpr Span(const std::array<T, N> &array) : ptr_(array.data()), len_(N) {}  // NOLINT
  Span(const std::vector<T> &v) : ptr_(v.data()), len_(v.size()) {}               // NOLINT
  constexpr const T *data() const { return ptr_; }
  constexpr size_t size() const { return len_; }

 private:
  const T *ptr_ = nullptr;
  size_t len_ = 0;
};

/// Transfer direction.
enum class Op : uint32_t { Write = RX_OP_WRITE, Read = RX_OP_READ };

/// One transfer handle, released when this object is destroyed (unless moved from or
/// released explicitly).
class Transfer {
 public:
  Transfer() = default;
  Transfer(rx_engine *engine, uint64_t handle) : engine_(engine), handle_(handle) {}
  Transfer(const Transfer &) = delete;
  Transfer &operator=(const Transfer &) = delete;
  Transfer(Transfer &&other) noexcept : engine_(other.engine_), handle_(std::exchange(other.handle_, 0)) {}
  Transfer &operator=(Transfer &&other) noexcept {
    if (this != &other) {
      reset();
      engine_ = other.engine_;
      handle_ = std::exchange(other.handle_, 0);
    }
    return *this;
  }
  ~Transfer() { reset(); }

  /// The raw handle (0 if this object owns none).
  uint64_t handle() const { return handle_; }

  Result<void> post() const { return from_c(rx_post(engine_, handle_)); }

  Result<rx_xfer_status> status() const {
    rx_xfer_status st{};
    rx_status s = rx_get_status(engine_, handle_, &st);
    if (s != RX_OK) return from_c(s);
    return st;
  }

  /// Waits up to `timeout_us` for the transfer to end.
  Result<rx_xfer_status> wait(uint64_t timeout_us) const {
    rx_xfer_status st{};
    rx_status s = rx_wait(engine_, handle_, timeout_us, &st);
    if (s != RX_OK) return from_c(s);
    return st;
  }

  /// Asks the transfer to stop (see `rx_cancel`): what came of it, an `rx_cancel_result`
  /// (`RX_CANCEL_DONE`, `RX_CANCEL_IN_FLIGHT`, `RX_CANCEL_ALREADY_COMPLETE`,
  /// `RX_CANCEL_ABANDONED`). The handle stays owned: release it (or let it go) as usual.
  Result<uint32_t> cancel() const {
    uint32_t r = 0;
    rx_status s = rx_cancel(engine_, handle_, &r);
    if (s != RX_OK) return from_c(s);
    return r;
  }

  /// Chooses this prepared transfer's deadline, in nanoseconds once posted
  /// (`UINT64_MAX`: none); see `rx_set_deadline`.
  Result<void> set_deadline(uint64_t timeout_ns) const { return from_c(rx_set_deadline(engine_, handle_, timeout_ns)); }

  /// Asks for this prepared transfer's end in the engine's completion queue, with
  /// `tag` (see `rx_report_completion`); call before post().
  Result<void> report_completion(uint64_t tag) const { return from_c(rx_report_completion(engine_, handle_, tag)); }

  /// Gives up ownership without releasing: the caller now releases `handle()` itself
  /// (for handles collected from `Engine::poll_completions`).
  uint64_t detach() { return std::exchange(handle_, 0); }

  /// Releases the handle now; the object owns nothing afterwards.
  Result<void> release() {
    if (handle_ == 0) return Status::InvalidHandle;
    rx_status s = rx_release(engine_, std::exchange(handle_, 0));
    return from_c(s);
  }

 private:
  void reset() {
    if (handle_ != 0) rx_release(engine_, std::exchange(handle_, 0));
  }
  rx_engine *engine_ = nullptr;
  uint64_t handle_ = 0;
};

/// An engine; freed when this object is destroyed.
class Engine {
 public:
  /// The default configuration, to adjust before create().
  static rx_config default_config() {
    rx_config c{};
    rx_config_default(&c);
    return c;
  }

  static Result<Engine> create(const rx_config &config) {
    rx_engine *e = nullptr;
    rx_status s = rx_engine_new(&config, &e);
    if (s != RX_OK) return from_c(s);
    return Engine(e);
  }

  Engine() = default;
  Engine(const Engine &) = delete;
  Engine &operator=(const Engine &) = delete;
  Engine(Engine &&other) noexcept : engine_(std::exchange(other.engine_, nullptr)) {}
  Engine &operator=(Engine &&other) noexcept {
    if (this != &other) {
      rx_engine_free(engine_);
      engine_ = std::exchange(other.engine_, nullptr);
    }
    return *this;
  }
  ~Engine() { rx_engine_free(engine_); }

  /// The C engine, for calls this layer does not wrap.
  rx_engine *get() const { return engine_; }

  Result<uint64_t> alloc_region(size_t len) const {
    uint64_t region = 0;
    rx_status s = rx_alloc_region(engine_, len, &region);
    if (s != RX_OK) return from_c(s);
    return region;
  }

  Result<void> deregister(uint64_t region) const { return from_c(rx_deregister(engine_, region)); }

  Result<void> write_region(uint64_t region, uint64_t offset, const void *data, size_t len) const {
    return from_c(rx_write_region(engine_, region, offset, data, len));
  }

  Result<void> read_region(uint64_t region, uint64_t offset, void *out, size_t len) const {
    return from_c(rx_read_region(engine_, region, offset, out, len));
  }

  /// This engine's metadata blob (control path: allocates).
  Result<std::vector<uint8_t>> local_metadata() const {
    size_t len = 0;
    rx_status s = rx_local_metadata(engine_, nullptr, 0, &len);
    if (s != RX_BUFFER_TOO_SMALL && s != RX_OK) return from_c(s);
    std::vector<uint8_t> blob(len);
    s = rx_local_metadata(engine_, blob.data(), blob.size(), &len);
    if (s != RX_OK) return from_c(s);
    blob.resize(len);
    return blob;
  }

  Result<uint32_t> load_peer(Span<uint8_t> blob) const {
    uint32_t peer = 0;
    rx_status s = rx_load_peer(engine_, blob.data(), blob.size(), &peer);
    if (s != RX_OK) return from_c(s);
    return peer;
  }

  /// Forgets a loaded peer (its id is stale from now on).
  Result<void> unload_peer(uint32_t peer) const { return from_c(rx_unload_peer(engine_, peer)); }

  /// Prepares a transfer without a notification.
  Result<Transfer> prepare(Op op, Span<rx_desc> local, uint32_t peer, Span<rx_desc> remote) const {
    return prepare_impl(op, local, peer, remote, nullptr, 0);
  }

  /// Prepares a transfer whose notification reaches the peer after its last byte.
  Result<Transfer> prepare(Op op, Span<rx_desc> local, uint32_t peer, Span<rx_desc> remote,
                           Span<uint8_t> notification) const {
    static const uint8_t empty = 0;
    const uint8_t *p = notification.data() ? notification.data() : &empty;
    return prepare_impl(op, local, peer, remote, p, notification.size());
  }

  Result<void> notify(uint32_t peer, Span<uint8_t> payload) const {
    return from_c(rx_notify(engine_, peer, payload.data(), payload.size()));
  }

  /// Pops a notification into `buf`; the value says whether there was one.
  Result<bool> pop_notification(uint8_t *buf, size_t cap, rx_notification *out) const {
    bool popped = false;
    rx_status s = rx_pop_notification(engine_, buf, cap, out, &popped);
    if (s != RX_OK) return from_c(s);
    return popped;
  }

  Result<rx_stats> stats() const {
    rx_stats st{};
    rx_status s = rx_engine_stats(engine_, &st);
    if (s != RX_OK) return from_c(s);
    return st;
  }

  /// Moves up to `cap` completions into `out`; the value is how many. Each handle is
  /// still to be released (`release_handle`, or a `Transfer` that owned it).
  Result<size_t> poll_completions(rx_completion *out, size_t cap) const {
    size_t n = 0;
    rx_status s = rx_poll_completions(engine_, out, cap, &n);
    if (s != RX_OK) return from_c(s);
    return n;
  }

  /// Waits up to `timeout_us` until a completion can be polled.
  Result<bool> wait_any(uint64_t timeout_us) const {
    bool ready = false;
    rx_status s = rx_wait_any(engine_, timeout_us, &ready);
    if (s != RX_OK) return from_c(s);
    return ready;
  }

  /// The eventfd readable while completions wait (owned by the engine).
  Result<int> completion_fd() const {
    int fd = -1;
    rx_status s = rx_completion_fd(engine_, &fd);
    if (s != RX_OK) return from_c(s);
    return fd;
  }

  /// Releases a raw handle (one detached from its `Transfer`).
  Result<void> release_handle(uint64_t handle) const { return from_c(rx_release(engine_, handle)); }

  /// Drives the transports once; the value is how many transfers ended.
  Result<size_t> progress() const {
    size_t done = 0;
    rx_status s = rx_progress(engine_, &done);
    if (s != RX_OK) return from_c(s);
    return done;
  }

  /// `Status::NotQuiescent` (with `last_error()` naming what) while the engine holds
  /// anything for transfers; see `rx_check_quiescent`.
  Result<void> check_quiescent() const { return from_c(rx_check_quiescent(engine_)); }

  /// The counters in Prometheus' text exposition format (control path: allocates).
  Result<std::string> metrics() const {
    std::string text(4096, '\0');
    size_t len = 0;
    rx_status s = rx_metrics(engine_, reinterpret_cast<uint8_t *>(&text[0]), text.size(), &len);
    if (s == RX_BUFFER_TOO_SMALL) {
      text.resize(len);
      s = rx_metrics(engine_, reinterpret_cast<uint8_t *>(&text[0]), text.size(), &len);
    }
    if (s != RX_OK) return from_c(s);
    text.resize(len);
    return text;
  }

 private:
  explicit Engine(rx_engine *engine) : engine_(engine) {}

  Result<Transfer> prepare_impl(Op op, Span<rx_desc> local, uint32_t peer, Span<rx_desc> remote,
                                const uint8_t *notif, size_t notif_len) const {
    uint64_t h = 0;
    rx_status s = rx_prepare(engine_, static_cast<uint32_t>(op), local.data(), local.size(), peer, remote.data(),
                             remote.size(), notif, notif_len, &h);
    if (s != RX_OK) return from_c(s);
    return Transfer(engine_, h);
  }

  rx_engine *engine_ = nullptr;
};

}  // namespace rx

#endif  // RINGXFER_HPP
