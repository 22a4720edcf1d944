// qwen2: the shared decoder with NeoX rope (pairs (i, i + d/2)) and Q/K/V biases (read when the file has them).
#include "architecture.h"

namespace owl {
namespace {
class Qwen2 : public Architecture {
public:
    std::string name() const override { return "qwen2"; }
    RopeMode rope_mode() const override { return RopeMode::Neox; }
};
}  // namespace

const Architecture& qwen2_architecture() {
    static const Qwen2 arch;
    return arch;
}

}  // namespace owl
