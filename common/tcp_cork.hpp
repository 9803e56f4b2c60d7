#pragma once
/// TCP_CORK around a WebSocket frame larger than one TLS record. A frame is
/// written as records of at most 16 KiB, one send each; with TCP_NODELAY each
/// send leaves at once as its own push, and the peer wakes once per record.
/// Corked, the records leave as full segments and the peer wakes about once
/// per frame (the relay's wake-ups per MB of a PTY stream halved). Small
/// frames (keystrokes, echoes, control messages) are never corked, so their
/// latency is unchanged.

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstddef>

namespace hpc {

class FrameCork {
public:
    /// Before a frame's write: corks `fd` when the frame spans several records.
    void begin(int fd, std::size_t frameBytes) {
        if (frameBytes <= kRecordBytes || m_corked) return;
        int one = 1;
        m_corked = ::setsockopt(fd, IPPROTO_TCP, TCP_CORK, &one, sizeof one) == 0;
    }
    /// After the frame's write completed: sends what the cork held.
    void end(int fd) {
        if (!m_corked) return;
        int zero = 0;
        ::setsockopt(fd, IPPROTO_TCP, TCP_CORK, &zero, sizeof zero);
        m_corked = false;
    }

private:
    static constexpr std::size_t kRecordBytes = std::size_t{16} * 1024;
    bool m_corked = false;
};

}  // namespace hpc
