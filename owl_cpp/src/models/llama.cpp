// llama (and llama-layout GGUFs of its relatives): the shared decoder with rope on pairs (2i, 2i+1), no biases.
#include "architecture.h"

namespace owl {
namespace {
class Llama : public Architecture {
public:
    std::string name() const override { return "llama"; }
    RopeMode rope_mode() const override { return RopeMode::Norm; }
};
}  // namespace

const Architecture& llama_architecture() {
    static const Llama arch;
    return arch;
}

}  // namespace owl
