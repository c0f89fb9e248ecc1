// Syntax tree of a parsed template. Built once by parse(), then only read (render is const and
// may run on many threads at once).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/chat_template/lexer.h"
#include "io/chat_template/value.h"

namespace nb::jinja {

// Filters get the input and the call's arguments; tests answer a yes/no question about a value.
// Their errors carry Python's message; the renderer prefixes the template position.
using FilterFn = Result<Value> (*)(const Value& input, const CallArgs& args);
using TestFn = Result<bool> (*)(const Value& input, const CallArgs& args);

enum class ExprKind : uint8_t {
  kConst,    // constant
  kName,     // name
  kGetAttr,  // args[0].name
  kGetItem,  // args[0][args[1]]
  kSlice,    // args[0][args[1]:args[2]:args[3]], absent parts are null
  kCall,     // args[0](args[1..], kwargs)
  kFilter,   // args[0] | name(args[1..], kwargs); args[0] is null in {% filter %} / {% set %} blocks
  kTest,     // args[0] is name(args[1..], kwargs)
  kNeg,      // -args[0]
  kPos,      // +args[0]
  kNot,      // not args[0]
  kAnd,      // args[0] and args[1]
  kOr,       // args[0] or args[1]
  kBinary,   // args[0] <name> args[1]; name is + - * / // % ** ~
  kCompare,  // args[0] ops[0] args[1] ops[1] args[2] ...; ops: == != < <= > >= in notin
  kCond,     // args[0] if args[1] else args[2] (args[2] may be null)
  kList,
  kTuple,
  kDict,     // args: key0, value0, key1, value1, ...
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  ExprKind kind = ExprKind::kConst;
  uint32_t pos = 0;  // byte offset in the normalized source, for error messages
  Value constant;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
  FilterFn filter = nullptr;
  TestFn test = nullptr;
};

enum class StmtKind : uint8_t {
  kText,         // text
  kOutput,       // {{ expr }}
  kIf,           // branches (test, body), else_body
  kFor,          // for targets in expr [if cond]: body, else_body
  kSet,          // set targets = expr; ns_target: set targets[0].targets[1] = expr
  kSetBlock,     // set targets[0] [| expr filters]: body
  kMacro,        // macro name(params = defaults): body
  kBreak,
  kContinue,
  kFilterBlock,  // filter expr: body
  kGeneration,   // generation: body (transformers' {% generation %}; a call block, so its own scope)
};

struct Stmt;
using Body = std::vector<Stmt>;

struct Stmt {
  StmtKind kind = StmtKind::kText;
  uint32_t pos = 0;
  std::string text;
  ExprPtr expr;
  std::vector<std::string> targets;
  bool target_is_tuple = false;
  bool ns_target = false;
  ExprPtr cond;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // for the last defaults.size() params
};

struct Program {
  SourceInfo source;
  Body body;
};

}  // namespace nb::jinja
