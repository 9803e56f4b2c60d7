// libFuzzer target: the envelope parser must never crash, hang or accept a
// frame it cannot serialize back.
#include "protocol.hpp"

#include <cstdint>
#include <cstdlib>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    auto parsed = hpc::protocol::parse(text, hpc::protocol::kMaxResponseBytes);
    if (auto* env = std::get_if<hpc::protocol::Envelope>(&parsed)) {
        // Whatever is accepted must survive a round trip.
        auto again = hpc::protocol::parse(hpc::protocol::serialize(*env), hpc::protocol::kMaxResponseBytes);
        if (!std::holds_alternative<hpc::protocol::Envelope>(again)) std::abort();
    }
    auto frame = hpc::protocol::decodeChannelFrame(std::span<const char>(text.data(), text.size()));
    if (frame && frame->data.size() + 4 != size) std::abort();
    return 0;
}
