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

}  // namespace

JsonMachine::JsonMachine(bool object_only, JsonLimits limits) : object_only_(object_only) {
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

bool JsonMachine::open(bool object) {
    if (depth_ >= max_depth_) return false;
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

bool JsonMachine::value_start(uint8_t b) {
    ws_ = 0;
    array_first_ = false;
    if (depth_ == 0 && object_only_ && b != '{') return false;
    switch (b) {
        case '{': return open(true);
        case '[': return open(false);
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
                    if (b == '.') { sub_ = Dot; return true; }
                    if (b == 'e' || b == 'E') { sub_ = Exp; return true; }
                    break;
                case Int:
                    if (is_digit(b)) return true;
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
            if (b == '}' && mode_ == KeyOrClose) return close(true);
            if (b != '"') return false;
            mode_ = String, sub_ = 0, need_ = 0, key_ = true, ws_ = 0;
            return true;
        case Colon:
            if (is_ws(b)) return whitespace();
            if (b != ':') return false;
            mode_ = Value, array_first_ = false, ws_ = 0;
            return true;
        case After:
            if (is_ws(b)) return whitespace();
            if (b == ',') {
                ws_ = 0;
                mode_ = ((stack_ >> (depth_ - 1)) & 1) ? Key : Value;
                array_first_ = false;
                return true;
            }
            if (b == '}') return close(true);
            if (b == ']') return close(false);
            return false;
        default:  // Done: nothing may follow a complete value
            return false;
    }
}

}  // namespace owl
