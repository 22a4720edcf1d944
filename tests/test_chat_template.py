"""Text GGUFs chat in their own chat template (tokenizer.chat_template, rendered with jinja2): the rendered
text is the template's (compared with strings written out here), a session's turn adds what the template
adds for it, answers stop at the template's end-of-turn token, owl-run chats with a .gguf; files without a
template fall back to ChatML or say they have no chat format; a template's refusal and a broken template
are clear ValueErrors. The tiny models' vocabularies get the control tokens the templates use."""
from __future__ import annotations

import io

import gguf
import pytest

import owl_cpp
from gguf_edit import ARRAY, BOOL, INT32, STRING, UINT32, rewrite
from owl_cpp.cli import main

CONTROL = 3

# The published templates (Meta-Llama-3-8B-Instruct, Qwen2-0.5B-Instruct, Mistral-7B-Instruct-v0.1).
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
          "{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
         "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
         "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
           "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
           "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
           "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
           "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are "
           "supported!') }}{% endif %}{% endfor %}")

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]




def with_template(src, dst, template, extra=None):
    keys = {"tokenizer.chat_template": (STRING, template)}
    keys.update(extra or {})
    return rewrite(src, dst, set_keys=keys)


@pytest.fixture(scope="module")
def files(tiny_gguf, tmp_path_factory):
    d = tmp_path_factory.mktemp("templates")
    qwen2, llama = tiny_gguf("qwen2", "f32"), tiny_gguf("llama", "f32")
    # Llama 3: the tiny qwen2 vocabulary's unused padding rows become Llama 3's control tokens; BOS is added
    r = gguf.GGUFReader(str(qwen2))
    tokens = list(r.fields["tokenizer.ggml.tokens"].contents())
    types = list(r.fields["tokenizer.ggml.token_type"].contents())
    first = tokens.index("[PAD1003]")
    for k, t in enumerate(LLAMA3_SPECIALS):
        tokens[first + k], types[first + k] = t, CONTROL
    llama3 = with_template(qwen2, d / "llama3.gguf", LLAMA3, {
        "tokenizer.ggml.tokens": (ARRAY, tokens, STRING), "tokenizer.ggml.token_type": (ARRAY, types, INT32),
        "tokenizer.ggml.bos_token_id": (UINT32, first), "tokenizer.ggml.eos_token_id": (UINT32, first + 1),
        "tokenizer.ggml.add_bos_token": (BOOL, True)})
    chatml = rewrite(qwen2, d / "chatml.gguf", drop=("tokenizer.chat_template",))   # ChatML vocabulary, no template
    return {"llama3": llama3, "qwen2": with_template(qwen2, d / "qwen2.gguf", QWEN2),
            "mistral": with_template(llama, d / "mistral.gguf", MISTRAL), "chatml": chatml, "none": llama}


def load(path, n_ctx=256):
    return owl_cpp.load(path, n_ctx=n_ctx, threads=1)


def words(model, text):
    return model.tokenize(text, add_special=False, special=False)


def special(model, text):
    ids = model.tokenize(text, add_special=False)
    assert len(ids) == 1 and model.tokenizer.is_control(ids[0]), text
    return ids[0]


# ----- rendering --------------------------------------------------------------------------------------

def test_llama3_template_renders_and_tokenizes_with_one_bos(files):
    m = load(files["llama3"])
    assert m.chat_template == LLAMA3
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi! "}]
    text = m._render(msgs, True)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = m._chat_ids(msgs)
    bos = special(m, "<|begin_of_text|>")
    assert m.tokenizer.bos_id == bos and ids[0] == bos and ids.count(bos) == 1      # the template's, not two
    assert ids == m.tokenize(text, add_special=False)
    assert ids[1] == special(m, "<|start_header_id|>")


def test_qwen2_template_renders_its_default_system_prompt(files):
    m = load(files["qwen2"])
    text = m._render([{"role": "user", "content": "Hi"}], True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert m._chat_ids([{"role": "user", "content": "Hi"}]) == m.tokenize(text)     # no BOS in this vocabulary


def test_mistral_template_writes_bos_and_refuses_a_system_message(files):
    m = load(files["mistral"])
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"}]
    text = m._render(msgs, True)
    assert text == "<s>[INST] Hi [/INST]Hello</s>[INST] Bye [/INST]"
    ids = m._chat_ids(msgs)
    assert ids[0] == m.tokenizer.bos_id and ids[1] != m.tokenizer.bos_id     # add_bos_token, and still one BOS
    with pytest.raises(ValueError, match="mistral.gguf: the chat template refuses this conversation: Conversation roles must alternate"):
        m.chat(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    s = m.session(system="Be brief.")
    with pytest.raises(ValueError, match="Conversation roles must alternate"):
        s.ask("Hi", max_tokens=2)


def test_template_variables_and_sandbox(files):
    import jinja2
    m = load(files["chatml"])
    assert m.chat_template is None                                  # this file has no template
    m.chat_template = ("{{ bos_token }}|{{ eos_token }}|{{ messages | tojson }}|{{ strftime_now('%Y') | length }}"
                       "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}")
    out = m._render([{"role": "user", "content": "é<b>"}, {"role": "user", "content": "x"}], True)
    assert out == '<|endoftext|>|<|im_end|>|[{"role": "user", "content": "é<b>"}, ' \
                  '{"role": "user", "content": "x"}]|4user'
    m.chat_template = "{{ messages.append(1) }}"                   # templates cannot change their arguments
    with pytest.raises(ValueError, match="chat_template.*cannot be rendered: SecurityError"):
        m._render([{"role": "user", "content": "x"}], True)
    with pytest.raises(ValueError, match="does not compile: TemplateSyntaxError"):
        m.chat_template = "{% for %}"
    assert issubclass(jinja2.sandbox.ImmutableSandboxedEnvironment, jinja2.Environment)


def test_a_template_that_fails_names_the_file(files, tmp_path):
    path = with_template(files["none"], tmp_path / "bad.gguf", "{{ messages[0]['content'].nope() }}")
    m = load(path)
    with pytest.raises(ValueError, match=r"bad\.gguf: the chat template \(tokenizer.chat_template\) cannot be "
                                         r"rendered: UndefinedError"):
        m.chat("Hi", max_tokens=2)
    assert m.generate("Hi", max_tokens=2, ignore_eos=True)           # generate() needs no template
    m.chat_template = None                                            # no template, no ChatML: no chat format
    with pytest.raises(ValueError, match="no chat template .* ChatML"):
        m.chat("Hi")


def test_owl_export_writes_the_checkpoints_template(tiny_gguf):
    from owl_export.tiny_tokenizers import CHATML_TEMPLATE

    m = load(tiny_gguf("qwen2", "f32"))       # its tokenizer_config.json has Qwen2's template, as llama.cpp copies it
    assert m.chat_template == CHATML_TEMPLATE
    assert m._chat_ids([{"role": "user", "content": "Hi"}]) == m.tokenize(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n")


# ----- fallbacks ----------------------------------------------------------------------------------------

def test_files_without_a_template(files):
    chatml = load(files["chatml"])
    assert chatml._chat_ids([{"role": "user", "content": "Hi"}]) == chatml.tokenize(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    none = load(files["none"], 64)
    with pytest.raises(ValueError, match=r"no chat template \(tokenizer.chat_template\).*generate\(\)"):
        none.chat("Hi")
    with pytest.raises(ValueError, match="no chat template"):
        none.session()
    assert none.generate("Hi", max_tokens=2, ignore_eos=True)


# ----- stopping -----------------------------------------------------------------------------------------

def test_llama3_stops_at_eot_id(files, script):
    m = load(files["llama3"])
    eot, eos = special(m, "<|eot_id|>"), special(m, "<|end_of_text|>")
    assert {eot, eos} <= m.terminators and special(m, "<|start_header_id|>") not in m.terminators
    answer = words(m, "Paris is nice")
    script(answer + [eot, 40, 41])
    info = m.chat("Capital of France?", max_tokens=20, return_info=True)
    assert info["tokens"] == answer and info["text"] == "Paris is nice" and info["finish_reason"] == "stop"


def test_special_token_ids_finds_control_tokens_only(files):  # (Owl3 names its terminators this way)
    m = load(files["chatml"])
    from owl_cpp.stops import EOG_TEXTS, special_token_ids
    assert special_token_ids(m.tokenizer, EOG_TEXTS) == {special(m, "<|im_end|>"), special(m, "<|endoftext|>")}


# ----- sessions -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama3", "qwen2", "mistral"])
def test_session_turns_are_the_templates_increments(files, script, name):
    m = load(files[name])
    end = m.tokenizer.eos_id if name == "mistral" else special(m, "<|eot_id|>" if name == "llama3" else "<|im_end|>")
    s = m.session(system=None if name == "mistral" else "Be brief.")
    conv = [] if name == "mistral" else [{"role": "system", "content": "Be brief."}]
    for k, (q, a) in enumerate([("Capital of France?", "Paris is nice"), ("And of Spain?", "Madrid"),
                                ("Thanks", "You are welcome")]):
        n_past = s.n_past
        # the answer's tokens as the template's rendering splits them (SentencePiece: no space prefix there)
        asked = m._chat_ids(conv + [{"role": "user", "content": q}])
        said = m._template_ids(m._render(conv + [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                         False))
        assert said[:len(asked)] == asked
        answer = said[len(asked):said.index(end, len(asked))]
        script(answer + [end, 40])
        info = s.ask(q, max_tokens=20, return_info=True)
        assert info["text"] == a and info["finish_reason"] == "stop"
        conv += [{"role": "user", "content": q}]
        prompt = s._slot.tokens[:info["prompt_tokens"]]
        assert prompt == m._chat_ids(conv)                  # the whole conversation, rendered and tokenized
        if k:                                               # only the new turn is evaluated
            assert info["prompt_tokens_evaluated"] == info["prompt_tokens"] - n_past
        conv += [{"role": "assistant", "content": a}]
    assert s.history == conv
    s.reset()
    script([40, 41, end])
    s.ask("Capital of France?", max_tokens=20)
    assert s.history[:-1] == conv[:len(conv) - 5] and s.history[-1]["role"] == "assistant"


def test_a_template_that_rewrites_earlier_turns(files, script, tmp_path):
    """The system prompt goes into the last user message (as Mistral's later templates do): each turn's prompt
    is the whole rendering, and the cache reuses what still matches."""
    tmpl = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}{% if loop.last and messages[0].role "
            "== 'system' %}{{ '[INST] ' + messages[0].content + '\n\n' + m.content + ' [/INST]' }}{% else %}"
            "{{ '[INST] ' + m.content + ' [/INST]' }}{% endif %}{% elif m.role == 'assistant' %}"
            "{{ m.content + eos_token }}{% endif %}{% endfor %}")
    m = load(with_template(files["none"], tmp_path / "m.gguf", tmpl))
    s = m.session(system="Be brief.")
    conv = [{"role": "system", "content": "Be brief."}]
    for q, a in [("Hi", "Hello"), ("Bye", "Ciao")]:
        script(words(m, a) + [m.tokenizer.eos_id])
        info = s.ask(q, max_tokens=10, return_info=True)
        conv.append({"role": "user", "content": q})
        assert s._slot.tokens[:info["prompt_tokens"]] == m._chat_ids(conv)
        conv.append({"role": "assistant", "content": a})
    assert info["prompt_tokens_evaluated"] < info["prompt_tokens"]


def test_an_answer_the_template_trims(files, script):
    """Llama 3's template trims each message: an answer with spaces around it is not what the next rendering
    holds, so the next turn renders the whole conversation (and the cache reuses the turns before it)."""
    m = load(files["llama3"])
    eot = special(m, "<|eot_id|>")
    s = m.session()
    script(words(m, " Paris ") + [eot])
    assert s.ask("Capital of France?", max_tokens=10) == " Paris "
    script([40, eot])
    info = s.ask("And of Spain?", max_tokens=10, return_info=True)
    conv = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": " Paris "},
            {"role": "user", "content": "And of Spain?"}]
    assert s._slot.tokens[:info["prompt_tokens"]] == m._chat_ids(conv)
    assert 0 < info["prompt_tokens_evaluated"] < info["prompt_tokens"]


def test_template_session_shifts_past_the_context(files):
    m = load(files["llama3"], n_ctx=128)
    s = m.session(system="Be brief.")
    for i in range(25):
        info = s.ask(f"Question {i}?", max_tokens=8, ignore_eos=True, return_info=True)
        assert info["prompt_tokens"] + info["completion_tokens"] <= 128
    assert s.turns_dropped > 0 and s.history[0] == {"role": "system", "content": "Be brief."}


# ----- owl-run --------------------------------------------------------------------------------------------

def run(argv, stdin=""):
    out = io.StringIO()
    rc = main(argv, stdin=io.StringIO(stdin), stdout=out)
    return rc, out.getvalue()


def test_owl_run_chats_with_a_gguf(files, capsys, tmp_path):
    m = load(files["llama3"])
    want = m.chat("Hi", max_tokens=4)
    rc, out = run(["--model", str(files["llama3"]), "-p", "Hi", "-n", "4", "-t", "1"])
    assert rc == 0 and out == want + "\n"
    rc, out = run(["--model", str(files["llama3"]), "-n", "4", "-t", "1"], stdin="Hi\n/image x.png\nHello\n")
    assert rc == 0 and out.startswith(want + "\n") and out.count("\n") == 2
    assert "takes no images" in capsys.readouterr().err
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    assert run(["--model", str(files["llama3"]), "--image", str(img), "-p", "Hi"])[0] == 2
    assert "text model: it takes no images" in capsys.readouterr().err
    assert run(["--model", str(files["none"]), "-p", "Hi"])[0] == 2
    assert "no chat template" in capsys.readouterr().err
    assert run(["--model", str(files["none"])], stdin="Hi\n")[0] == 2
    assert "no chat template" in capsys.readouterr().err
