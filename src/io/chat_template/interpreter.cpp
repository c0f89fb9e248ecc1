#include "io/chat_template/interpreter.h"

#include "io/chat_template/builtins.h"
#include "io/chat_template/operators.h"

namespace nb::jinja {
namespace {

constexpr int kMaxMacroDepth = 100;  // like Python's recursion limit, well inside a thread's stack

enum class Flow { kNormal, kBreak, kContinue };

class Renderer {
 public:
  Renderer(const Program& program, const Dict& context) : prog_(program), src_(program.source) {
    frames_.push_back(Frame{context, -1});
  }

  Result<std::string> run() {
    std::string out;
    Flow flow = Flow::kNormal;
    NB_RETURN_IF_ERROR(exec_body(prog_.body, out, flow));
    return out;
  }

 private:
  // Variables of one scope; `parent` links to the enclosing one (-1 for the template's root).
  struct Frame {
    Dict vars;
    int parent;
  };

  // ---- scopes ----
  Value lookup(const std::string& name) const {
    for (int f = current_; f >= 0; f = frames_[f].parent)
      if (const Value* v = frames_[f].vars.find(name)) return *v;
    if (const Value* v = template_globals().find(name)) return *v;
    return Value::undefined("'" + name + "' is undefined");
  }
  void assign(const std::string& name, Value v) { frames_[current_].vars.set(name, std::move(v)); }
  void push_frame(int parent) {
    frames_.push_back(Frame{Dict(), parent});
    current_ = static_cast<int>(frames_.size()) - 1;
  }
  void pop_frame(int restore) {
    frames_.pop_back();
    current_ = restore;
  }

  // Builtin errors carry Python's message; this says where in the template it happened.
  Status at(const Expr& e, const Status& s) const { return s.is_ok() ? s : src_.render_error(e.pos, s.message()); }
  template <typename T>
  Result<T> at(const Expr& e, Result<T> r) const {
    if (r.is_ok()) return r;
    return at(e, r.status());
  }

  // ---- statements ----
  Status exec_body(const Body& body, std::string& out, Flow& flow) {
    for (const Stmt& s : body) {
      NB_RETURN_IF_ERROR(exec(s, out, flow));
      if (flow != Flow::kNormal) return Status::ok();
    }
    return Status::ok();
  }

  Status exec(const Stmt& s, std::string& out, Flow& flow) {
    switch (s.kind) {
      case StmtKind::kText: out += s.text; return Status::ok();
      case StmtKind::kOutput: {
        NB_ASSIGN_OR_RETURN(Value v, eval(*s.expr));
        out += py_str(v);
        return Status::ok();
      }
      case StmtKind::kIf:
        for (const auto& [test, body] : s.branches) {
          NB_ASSIGN_OR_RETURN(Value t, eval(*test));
          if (truthy(t)) return exec_body(body, out, flow);
        }
        return exec_body(s.else_body, out, flow);
      case StmtKind::kFor: return exec_for(s, out);
      case StmtKind::kSet: return exec_set(s);
      case StmtKind::kSetBlock: {
        NB_ASSIGN_OR_RETURN(Value v, capture(s));
        if (s.ns_target) return assign_attr(s, std::move(v));
        assign(s.targets[0], std::move(v));
        return Status::ok();
      }
      case StmtKind::kMacro: assign(s.name, make_macro(s)); return Status::ok();
      case StmtKind::kBreak: flow = Flow::kBreak; return Status::ok();
      case StmtKind::kContinue: flow = Flow::kContinue; return Status::ok();
      case StmtKind::kGeneration: {  // a call block: the body's `set`s stay inside
        int outer = current_;
        push_frame(outer);
        Flow inner = Flow::kNormal;
        Status st = exec_body(s.body, out, inner);
        pop_frame(outer);
        return st;
      }
      case StmtKind::kFilterBlock: {
        NB_ASSIGN_OR_RETURN(Value v, capture(s));
        out += py_str(v);
        return Status::ok();
      }
    }
    return Status::ok();
  }

  // Renders a block body to a string and runs it through the block's filters, if any.
  Result<Value> capture(const Stmt& s) {
    std::string text;
    Flow flow = Flow::kNormal;
    NB_RETURN_IF_ERROR(exec_body(s.body, text, flow));
    Value v = Value::string(std::move(text));
    if (s.expr) {
      NB_ASSIGN_OR_RETURN(v, eval_filter(*s.expr, &v));
    }
    return v;
  }

  Status bind_targets(const Stmt& s, const Expr& where, const Value& v) {
    if (!s.target_is_tuple) {
      assign(s.targets[0], v);
      return Status::ok();
    }
    NB_ASSIGN_OR_RETURN(ValueList parts, at(where, iterate(v)));
    if (parts.size() != s.targets.size())
      return src_.render_error(where.pos, parts.size() < s.targets.size()
          ? strformat("not enough values to unpack (expected %zu, got %zu)", s.targets.size(), parts.size())
          : strformat("too many values to unpack (expected %zu)", s.targets.size()));
    for (size_t i = 0; i < parts.size(); ++i) assign(s.targets[i], parts[i]);
    return Status::ok();
  }

  Status assign_attr(const Stmt& s, Value v) {
    Value ns = lookup(s.targets[0]);
    if (!ns.is_namespace() || ns.ns_read_only())
      return src_.render_error(s.pos, "cannot assign attribute on non-namespace object '" + s.targets[0] + "'");
    ns.ns_attrs().set(s.targets[1], std::move(v));
    return Status::ok();
  }

  Status exec_set(const Stmt& s) {
    NB_ASSIGN_OR_RETURN(Value v, eval(*s.expr));
    if (s.ns_target) return assign_attr(s, std::move(v));
    return bind_targets(s, *s.expr, v);
  }

  // Items the loop visits: the iterable, minus those failing the `if` filter.
  Result<ValueList> loop_items(const Stmt& s) {
    NB_ASSIGN_OR_RETURN(Value iterable, eval(*s.expr));
    NB_ASSIGN_OR_RETURN(ValueList items, at(*s.expr, iterate(iterable)));
    if (!s.cond) return items;
    ValueList kept;
    int outer = current_;
    push_frame(outer);
    for (const Value& item : items) {
      Status st = bind_targets(s, *s.expr, item);
      Result<Value> keep = st.is_ok() ? eval(*s.cond) : Result<Value>(st);
      if (!keep.is_ok()) {
        pop_frame(outer);
        return keep.status();
      }
      if (truthy(*keep)) kept.push_back(item);
    }
    pop_frame(outer);
    return kept;
  }

  static Value loop_object(const ValueList& items, size_t i) {
    auto attrs = std::make_shared<Dict>();
    int64_t n = static_cast<int64_t>(items.size()), k = static_cast<int64_t>(i);
    attrs->set("index", Value::integer(k + 1));
    attrs->set("index0", Value::integer(k));
    attrs->set("revindex", Value::integer(n - k));
    attrs->set("revindex0", Value::integer(n - k - 1));
    attrs->set("first", Value::boolean(k == 0));
    attrs->set("last", Value::boolean(k == n - 1));
    attrs->set("length", Value::integer(n));
    attrs->set("depth", Value::integer(1));
    attrs->set("depth0", Value::integer(0));
    attrs->set("previtem", k > 0 ? items[i - 1] : Value::undefined("there is no previous item"));
    attrs->set("nextitem", k + 1 < n ? items[i + 1] : Value::undefined("there is no next item"));
    attrs->set("cycle", Value::callable("loop.cycle", [k](const CallArgs& a) -> Result<Value> {
      if (a.args.empty()) return invalid_argument("no items for cycling given");
      return a.args[static_cast<size_t>(k) % a.args.size()];
    }));
    return Value::ns(std::move(attrs), /*read_only=*/true);
  }

  // Every iteration gets a fresh scope whose parent is the scope around the loop.
  Status exec_for(const Stmt& s, std::string& out) {
    NB_ASSIGN_OR_RETURN(ValueList items, loop_items(s));
    if (items.empty()) {
      Flow flow = Flow::kNormal;
      return exec_body(s.else_body, out, flow);
    }
    int outer = current_;
    push_frame(outer);
    Status st;
    for (size_t i = 0; i < items.size() && st.is_ok(); ++i) {
      frames_[current_].vars = Dict();
      assign("loop", loop_object(items, i));
      st = bind_targets(s, *s.expr, items[i]);
      Flow flow = Flow::kNormal;
      if (st.is_ok()) st = exec_body(s.body, out, flow);
      if (flow == Flow::kBreak) break;
    }
    pop_frame(outer);
    return st;
  }

  // ---- macros ----
  Value make_macro(const Stmt& m) {
    return Value::callable(m.name, [this, &m](const CallArgs& a) { return call_macro(m, a); },
                           /*verbatim_errors=*/true);
  }

  Status bind_macro_args(const Stmt& m, const CallArgs& a) {
    if (a.args.size() > m.params.size())
      return src_.render_error(m.pos, strformat("macro '%s' takes not more than %zu argument(s)", m.name.c_str(), m.params.size()));
    std::vector<bool> given(m.params.size(), false);
    for (size_t i = 0; i < a.args.size(); ++i) {
      assign(m.params[i], a.args[i]);
      given[i] = true;
    }
    for (const auto& [key, value] : a.kwargs) {
      size_t k = 0;
      while (k < m.params.size() && m.params[k] != key) ++k;
      if (k == m.params.size() || given[k])
        return src_.render_error(m.pos, strformat("macro '%s' got an unexpected or repeated keyword argument '%s'", m.name.c_str(), key.c_str()));
      assign(key, value);
      given[k] = true;
    }
    size_t first_default = m.params.size() - m.defaults.size();
    for (size_t i = 0; i < m.params.size(); ++i) {
      if (given[i]) continue;
      if (i < first_default) {
        assign(m.params[i], Value::undefined("parameter '" + m.params[i] + "' was not provided"));
        continue;
      }
      NB_ASSIGN_OR_RETURN(Value d, eval(*m.defaults[i - first_default]));
      assign(m.params[i], d);
    }
    return Status::ok();
  }

  // A macro body runs in its own scope under the template's root scope.
  Result<Value> call_macro(const Stmt& m, const CallArgs& a) {
    if (macro_depth_ >= kMaxMacroDepth)
      return src_.render_error(m.pos, "macro '" + m.name + "' recursed too deeply");
    int outer = current_;
    push_frame(0);
    ++macro_depth_;
    std::string out;
    Flow flow = Flow::kNormal;
    Status st = bind_macro_args(m, a);
    if (st.is_ok()) st = exec_body(m.body, out, flow);
    --macro_depth_;
    pop_frame(outer);
    NB_RETURN_IF_ERROR(st);
    return Value::string(std::move(out));
  }

  // ---- expressions ----
  Result<Value> eval(const Expr& e);
  Result<Value> eval_call(const Expr& e);
  Result<Value> eval_filter(const Expr& e, const Value* block_input);
  Result<Value> eval_compare(const Expr& e);
  Status eval_args(const Expr& e, size_t first, CallArgs* out);

  const Program& prog_;
  const SourceInfo& src_;
  std::vector<Frame> frames_;
  int current_ = 0;
  int macro_depth_ = 0;
};

Status Renderer::eval_args(const Expr& e, size_t first, CallArgs* out) {
  for (size_t i = first; i < e.args.size(); ++i) {
    NB_ASSIGN_OR_RETURN(Value v, eval(*e.args[i]));
    out->args.push_back(std::move(v));
  }
  for (const auto& [key, expr] : e.kwargs) {
    NB_ASSIGN_OR_RETURN(Value v, eval(*expr));
    out->kwargs.emplace_back(key, std::move(v));
  }
  return Status::ok();
}

Result<Value> Renderer::eval_call(const Expr& e) {
  NB_ASSIGN_OR_RETURN(Value callee, eval(*e.args[0]));
  CallArgs args;
  NB_RETURN_IF_ERROR(eval_args(e, 1, &args));
  if (callee.is_undefined()) return at(e, undefined_error(callee));
  if (!callee.is_callable())
    return src_.render_error(e.pos, strformat("'%s' object is not callable", type_name(callee).c_str()));
  const Callable& fn = callee.as_callable();
  Result<Value> r = fn.fn(args);
  if (r.is_ok() || fn.verbatim_errors) return r;
  return at(e, r.status());
}

// Applies the filter chain e; block_input feeds the innermost filter of a {% filter %} block.
Result<Value> Renderer::eval_filter(const Expr& e, const Value* block_input) {
  Value input;
  if (e.args[0]) {
    if (block_input && e.args[0]->kind == ExprKind::kFilter) {
      NB_ASSIGN_OR_RETURN(input, eval_filter(*e.args[0], block_input));
    } else {
      NB_ASSIGN_OR_RETURN(input, eval(*e.args[0]));
    }
  } else if (block_input) {
    input = *block_input;
  }
  CallArgs args;
  NB_RETURN_IF_ERROR(eval_args(e, 1, &args));
  return at(e, e.filter(input, args));
}

Result<Value> Renderer::eval_compare(const Expr& e) {
  NB_ASSIGN_OR_RETURN(Value left, eval(*e.args[0]));
  for (size_t i = 0; i < e.ops.size(); ++i) {
    NB_ASSIGN_OR_RETURN(Value right, eval(*e.args[i + 1]));
    NB_ASSIGN_OR_RETURN(bool ok, at(e, compare_op(e.ops[i], left, right)));
    if (!ok) return Value::boolean(false);
    left = std::move(right);
  }
  return Value::boolean(true);
}

Result<Value> Renderer::eval(const Expr& e) {
  switch (e.kind) {
    case ExprKind::kConst: return e.constant;
    case ExprKind::kName: return lookup(e.name);
    case ExprKind::kGetAttr: {
      NB_ASSIGN_OR_RETURN(Value obj, eval(*e.args[0]));
      return at(e, get_attr(obj, e.name));
    }
    case ExprKind::kGetItem: {
      NB_ASSIGN_OR_RETURN(Value obj, eval(*e.args[0]));
      NB_ASSIGN_OR_RETURN(Value key, eval(*e.args[1]));
      return at(e, get_item(obj, key));
    }
    case ExprKind::kSlice: {
      Value parts[4];
      for (int i = 0; i < 4; ++i) {
        if (e.args[i]) {
          NB_ASSIGN_OR_RETURN(parts[i], eval(*e.args[i]));
        }
        else parts[i] = Value::none();
      }
      return at(e, get_slice(parts[0], parts[1], parts[2], parts[3]));
    }
    case ExprKind::kCall: return eval_call(e);
    case ExprKind::kFilter: return eval_filter(e, nullptr);
    case ExprKind::kTest: {
      NB_ASSIGN_OR_RETURN(Value v, eval(*e.args[0]));
      CallArgs args;
      NB_RETURN_IF_ERROR(eval_args(e, 1, &args));
      NB_ASSIGN_OR_RETURN(bool ok, at(e, e.test(v, args)));
      return Value::boolean(ok);
    }
    case ExprKind::kNeg:
    case ExprKind::kPos: {
      NB_ASSIGN_OR_RETURN(Value v, eval(*e.args[0]));
      return at(e, negate(v, e.kind == ExprKind::kNeg));
    }
    case ExprKind::kNot: {
      NB_ASSIGN_OR_RETURN(Value v, eval(*e.args[0]));
      return Value::boolean(!truthy(v));
    }
    case ExprKind::kAnd:
    case ExprKind::kOr: {  // Python returns the deciding operand itself
      NB_ASSIGN_OR_RETURN(Value left, eval(*e.args[0]));
      if (truthy(left) == (e.kind == ExprKind::kOr)) return left;
      return eval(*e.args[1]);
    }
    case ExprKind::kBinary: {
      NB_ASSIGN_OR_RETURN(Value left, eval(*e.args[0]));
      NB_ASSIGN_OR_RETURN(Value right, eval(*e.args[1]));
      return at(e, binary_op(e.name, left, right));
    }
    case ExprKind::kCompare: return eval_compare(e);
    case ExprKind::kCond: {
      NB_ASSIGN_OR_RETURN(Value test, eval(*e.args[1]));
      if (truthy(test)) return eval(*e.args[0]);
      if (e.args[2]) return eval(*e.args[2]);
      return Value::undefined("the inline if-expression evaluated to false and no else section was defined.");
    }
    case ExprKind::kList:
    case ExprKind::kTuple: {
      ValueList items;
      for (const ExprPtr& item : e.args) {
        NB_ASSIGN_OR_RETURN(Value v, eval(*item));
        items.push_back(std::move(v));
      }
      return e.kind == ExprKind::kList ? Value::list(std::move(items)) : Value::tuple(std::move(items));
    }
    case ExprKind::kDict: {
      Dict d;
      for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
        NB_ASSIGN_OR_RETURN(Value key, eval(*e.args[i]));
        NB_ASSIGN_OR_RETURN(Value value, eval(*e.args[i + 1]));
        if (!key.is_string())
          return src_.render_error(e.args[i]->pos, "unsupported: dict keys must be strings, got " + type_name(key));
        d.set(key.as_string(), std::move(value));
      }
      return Value::dict(std::move(d));
    }
  }
  return internal_error("unknown expression kind");
}

}  // namespace

Result<std::string> render_program(const Program& program, const Dict& context) {
  Renderer renderer(program, context);
  return renderer.run();
}

}  // namespace nb::jinja
