// The JSON pushdown automaton (json_constraint.h). One byte at a time; the stack is a bit per level.
#include <string>

#include "owl/error.h"
#include "owl/json_constraint.h"

namespace owl {
namespace {

enum NumSub : uint8_t { Minus, Zero, Int, Dot, Frac, Exp, ExpSign, ExpInt };
const char* const kLiterals[3] = {"true", "false", "null"};

bool is_ws(uint8_t b) { return b == ' ' || b == '\t' || b == '\n' || b == '\r'; }
bool is_digit(uint8_t b) { return b >= '0' && b <= '9'; }
bool is_hex(uint8_t b) { return is_digit(b) || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F'); }

// The schema type a value starting with byte b has (0: none).
uint8_t type_of_start(uint8_t b) {
    switch (b) {
        case '{': return JsonSchema::Object;
        case '[': return JsonSchema::Array;
        case '"': return JsonSchema::String;
        case 't': case 'f': return JsonSchema::Boolean;
        case 'n': return JsonSchema::Null;
        default: return b == '-' || is_digit(b) ? uint8_t(JsonSchema::Number | JsonSchema::Integer) : uint8_t(0);
    }
}

int popcount64(uint64_t x) {
    int n = 0;
    for (; x; x &= x - 1) ++n;
    return n;
}


}  // namespace

void JsonSchema::validate() const {
    auto fail = [](const std::string& what) { throw Error("json schema: " + what); };
    if (nodes.empty() || nodes.size() > 32767) fail("needs 1 to 32767 nodes");
    if (nodes[0].types != Object || !nodes[0].enum_values.empty()) fail("the root must be an object (type object)");
    for (size_t i = 0; i < nodes.size(); ++i) {
        const Node& n = nodes[i];
        const std::string at = "node " + std::to_string(i) + ": ";
        if (n.types == 0 || n.types > Any) fail(at + "bad type mask");
        if (n.enum_values.size() > size_t(kMaxEnum)) fail(at + "more than 255 enum values");
        for (size_t k = 0; k < n.enum_values.size(); ++k)
            if (n.enum_values[k].empty() || n.enum_values[k].size() > 255 || (k && n.enum_values[k - 1] >= n.enum_values[k]))
                fail(at + "enum values must be 1..255 bytes, sorted and unique");
        if (n.keys.size() > size_t(kMaxProperties) || n.keys.size() != n.key_node.size())
            fail(at + "at most 64 properties, one node each");
        for (size_t k = 0; k < n.keys.size(); ++k) {
            const std::string& key = n.keys[k];
            if (key.size() < 2 || key.size() > 255 || key.front() != '"' || key.back() != '"' || (k && n.keys[k - 1] >= key))
                fail(at + "property names must be JSON strings of at most 255 bytes, sorted and unique");
            if (n.key_node[k] < 0 || size_t(n.key_node[k]) >= nodes.size()) fail(at + "property node out of range");
        }
        if (n.keys.size() < 64 && (n.required >> n.keys.size()) != 0) fail(at + "required names a missing property");
        if (n.items < -1 || n.items >= int32_t(nodes.size())) fail(at + "items node out of range");
    }
}

JsonMachine::JsonMachine(bool object_only, JsonLimits limits, const JsonSchema* schema)
    : object_only_(object_only || schema != nullptr), schema_(schema) {
    if (schema) cur_node_ = 0;
    if (limits.max_depth < 1 || limits.max_depth > 64)
        throw Error("json: max_depth must be in [1, 64], got " + std::to_string(limits.max_depth));
    if (limits.max_ws < 0 || limits.max_ws > 255)
        throw Error("json: max_ws must be in [0, 255], got " + std::to_string(limits.max_ws));
    max_depth_ = uint8_t(limits.max_depth);
    max_ws_ = uint8_t(limits.max_ws);
}

bool JsonMachine::can_end() const {
    if (mode_ == Done) return true;
    // A top-level number is whole once it ends in a digit; only the end of the text ends it.
    return mode_ == Number && depth_ == 0 && (sub_ == Zero || sub_ == Int || sub_ == Frac || sub_ == ExpInt);
}

bool JsonMachine::whitespace() {
    if (ws_ >= max_ws_) return false;
    ++ws_;
    return true;
}

bool JsonMachine::end_value() {
    ws_ = 0;
    key_ = false;
    mode_ = depth_ == 0 ? Done : After;
    return true;
}

bool JsonMachine::open(bool object, int16_t node) {
    if (depth_ >= max_depth_ || (schema_ && depth_ >= JsonSchema::kMaxDepth)) return false;
    if (schema_) {
        level_node_[depth_] = node;
        level_seen_[depth_] = 0;
        cur_node_ = object || node < 0 ? int16_t(-1) : int16_t(schema_->nodes[size_t(node)].items);
    }
    if (object) stack_ |= uint64_t(1) << depth_;
    else stack_ &= ~(uint64_t(1) << depth_);
    ++depth_;
    mode_ = object ? KeyOrClose : Value;
    array_first_ = !object;
    ws_ = 0;
    return true;
}

bool JsonMachine::close(bool object) {
    if (depth_ == 0 || bool((stack_ >> (depth_ - 1)) & 1) != object) return false;
    --depth_;
    array_first_ = false;
    return end_value();
}

const JsonSchema::Node* JsonMachine::level_node() const {
    if (!schema_ || depth_ == 0 || level_node_[depth_ - 1] < 0) return nullptr;
    return &schema_->nodes[size_t(level_node_[depth_ - 1])];
}

// '}' needs every required property; ',' needs a property left to write (else the object could never close).
bool JsonMachine::may_close_object() const {
    const JsonSchema::Node* n = level_node();
    return !n || n->keys.empty() || (level_seen_[depth_ - 1] & n->required) == n->required;
}

bool JsonMachine::may_add_key() const {
    const JsonSchema::Node* n = level_node();
    return !n || n->keys.empty() || popcount64(level_seen_[depth_ - 1]) < int(n->keys.size());
}

// One byte of an enum value or a property name: the candidates are a range of the sorted list that share the
// bytes so far; a property already written is no candidate.
bool JsonMachine::literal_match(uint8_t b) {
    const bool key = mode_ == KeyLit;
    const JsonSchema::Node& n = schema_->nodes[size_t(key ? level_node_[depth_ - 1] : cur_node_)];
    const std::vector<std::string>& list = key ? n.keys : n.enum_values;
    const uint64_t seen = key ? level_seen_[depth_ - 1] : 0;
    int lo = -1, hi = -1;
    bool open_candidate = false;
    for (int i = lit_lo_; i < lit_hi_; ++i) {
        const std::string& s = list[size_t(i)];
        if (s.size() > lit_pos_ && uint8_t(s[lit_pos_]) == b) {
            if (lo < 0) lo = i;
            hi = i + 1;
            open_candidate |= !((seen >> i) & 1);
        }
    }
    if (lo >= 0 && open_candidate) {
        lit_lo_ = uint8_t(lo), lit_hi_ = uint8_t(hi), ++lit_pos_;
        if (key)  // a name ends with its closing quote, which no other name continues
            for (int i = lo; i < hi; ++i)
                if (list[size_t(i)].size() == lit_pos_ && !((seen >> i) & 1)) {
                    level_seen_[depth_ - 1] |= uint64_t(1) << i;
                    cur_node_ = int16_t(n.key_node[size_t(i)]);
                    mode_ = Colon, ws_ = 0;
                    return true;
                }
        return true;
    }
    if (!key)  // b follows a whole enum value (a number such as 1 may be one and the prefix of another)
        for (int i = lit_lo_; i < lit_hi_; ++i)
            if (list[size_t(i)].size() == lit_pos_) {
                end_value();
                return push(b);
            }
    return false;
}

bool JsonMachine::value_start(uint8_t b) {
    ws_ = 0;
    array_first_ = false;
    if (depth_ == 0 && object_only_ && b != '{') return false;
    int16_t node = -1;
    int_only_ = false;
    if (schema_ && cur_node_ >= 0) {
        node = cur_node_;
        const JsonSchema::Node& n = schema_->nodes[size_t(node)];
        if (!n.enum_values.empty()) {
            mode_ = EnumLit, lit_lo_ = 0, lit_hi_ = uint8_t(n.enum_values.size()), lit_pos_ = 0;
            return literal_match(b);
        }
        if (!(n.types & type_of_start(b))) return false;
        int_only_ = !(n.types & JsonSchema::Number);
    }
    switch (b) {
        case '{': return open(true, node);
        case '[': return open(false, node);
        case '"': mode_ = String; sub_ = 0; need_ = 0; key_ = false; return true;
        case '-': mode_ = Number; sub_ = Minus; return true;
        case '0': mode_ = Number; sub_ = Zero; return true;
        case 't': mode_ = Literal; sub_ = 0; need_ = 1; return true;
        case 'f': mode_ = Literal; sub_ = 1; need_ = 1; return true;
        case 'n': mode_ = Literal; sub_ = 2; need_ = 1; return true;
        default:
            if (b >= '1' && b <= '9') { mode_ = Number; sub_ = Int; return true; }
            return false;
    }
}

bool JsonMachine::push(const std::string& bytes) {
    for (char c : bytes)
        if (!push(uint8_t(c))) return false;
    return true;
}

bool JsonMachine::push(uint8_t b) {
    switch (mode_) {
        case String:
            if (need_ > 0) {  // a UTF-8 continuation byte, in the range the lead byte allows
                if (b < lo_ || b > hi_) return false;
                lo_ = 0x80, hi_ = 0xBF;
                --need_;
                return true;
            }
            if (sub_ == 1) {  // after a backslash
                if (b == 'u') { sub_ = 5; return true; }
                if (b == '"' || b == '\\' || b == '/' || b == 'b' || b == 'f' || b == 'n' || b == 'r' || b == 't') {
                    sub_ = 0;
                    return true;
                }
                return false;
            }
            if (sub_ >= 2) {  // \u's hex digits: sub_ - 1 of them left
                if (!is_hex(b)) return false;
                sub_ = sub_ == 2 ? 0 : uint8_t(sub_ - 1);
                return true;
            }
            if (b == '"') {
                if (key_) { key_ = false; mode_ = Colon; ws_ = 0; return true; }
                return end_value();
            }
            if (b == '\\') { sub_ = 1; return true; }
            if (b < 0x20) return false;      // control characters must be escaped
            if (b < 0x80) return true;
            // A UTF-8 lead byte: no overlong forms, no surrogates, nothing past U+10FFFF.
            if (b < 0xC2 || b > 0xF4) return false;
            if (b < 0xE0) need_ = 1;
            else if (b < 0xF0) { need_ = 2; if (b == 0xE0) lo_ = 0xA0; if (b == 0xED) hi_ = 0x9F; }
            else { need_ = 3; if (b == 0xF0) lo_ = 0x90; if (b == 0xF4) hi_ = 0x8F; }
            return true;
        case Number:
            switch (sub_) {
                case Minus:
                    if (b == '0') { sub_ = Zero; return true; }
                    if (b >= '1' && b <= '9') { sub_ = Int; return true; }
                    return false;
                case Zero:
                case Int:
                    if (is_digit(b) && sub_ == Int) return true;
                    if (int_only_) break;  // a schema integer: no fraction, no exponent
                    if (b == '.') { sub_ = Dot; return true; }
                    if (b == 'e' || b == 'E') { sub_ = Exp; return true; }
                    break;
                case Dot:
                    if (is_digit(b)) { sub_ = Frac; return true; }
                    return false;
                case Frac:
                    if (is_digit(b)) return true;
                    if (b == 'e' || b == 'E') { sub_ = Exp; return true; }
                    break;
                case Exp:
                    if (b == '+' || b == '-') { sub_ = ExpSign; return true; }
                    if (is_digit(b)) { sub_ = ExpInt; return true; }
                    return false;
                case ExpSign:
                    if (is_digit(b)) { sub_ = ExpInt; return true; }
                    return false;
                default:  // ExpInt
                    if (is_digit(b)) return true;
                    break;
            }
            // b ends the number: it belongs to what follows it (a top-level number ends only with the text).
            if (depth_ == 0) return false;
            end_value();
            return push(b);
        case Literal: {
            const char* lit = kLiterals[sub_];
            if (b != uint8_t(lit[need_])) return false;
            if (lit[++need_] == 0) { need_ = 0; return end_value(); }
            return true;
        }
        case Value:
            if (is_ws(b)) return whitespace();
            if (b == ']' && array_first_) return close(false);
            return value_start(b);
        case KeyOrClose:
        case Key:
            if (is_ws(b)) return whitespace();
            if (b == '}' && mode_ == KeyOrClose) return may_close_object() && close(true);
            if (b != '"') return false;
            ws_ = 0;
            if (const JsonSchema::Node* n = level_node(); n && !n->keys.empty()) {
                mode_ = KeyLit, lit_lo_ = 0, lit_hi_ = uint8_t(n->keys.size()), lit_pos_ = 0;
                return literal_match(b);
            }
            mode_ = String, sub_ = 0, need_ = 0, key_ = true, cur_node_ = -1;
            return true;
        case EnumLit:
        case KeyLit:
            return literal_match(b);
        case Colon:
            if (is_ws(b)) return whitespace();
            if (b != ':') return false;
            mode_ = Value, array_first_ = false, ws_ = 0;
            return true;
        case After:
            if (is_ws(b)) return whitespace();
            if (b == ',') {
                ws_ = 0;
                array_first_ = false;
                if ((stack_ >> (depth_ - 1)) & 1) {
                    if (!may_add_key()) return false;
                    mode_ = Key;
                } else {
                    mode_ = Value;
                    if (schema_) cur_node_ = level_node_[depth_ - 1] < 0 ? int16_t(-1)
                                                                          : int16_t(schema_->nodes[size_t(level_node_[depth_ - 1])].items);
                }
                return true;
            }
            if (b == '}') return may_close_object() && close(true);
            if (b == ']') return close(false);
            return false;
        default:  // Done: nothing may follow a complete value
            return false;
    }
}

}  // namespace owl
