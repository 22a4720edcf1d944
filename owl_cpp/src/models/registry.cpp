// Architectures by general.architecture. Listed explicitly: self-registering objects in a static library are
// dropped by the linker when nothing references them.
#include "architecture.h"

namespace owl {
namespace {
const std::vector<const Architecture*>& all() {
    static const std::vector<const Architecture*> list = {&llama_architecture(), &qwen2_architecture(), &owl3_architecture(), &owl2_architecture(),
                                                           &mplug2_architecture()};
    return list;
}
}  // namespace

const Architecture* find_architecture(const std::string& name) {
    for (const Architecture* a : all())
        if (a->name() == name) return a;
    return nullptr;
}

std::vector<std::string> architecture_names() {
    std::vector<std::string> names;
    for (const Architecture* a : all()) names.push_back(a->name());
    return names;
}

}  // namespace owl
