"""What llmforge prints for people: messages come out as written, whatever brackets or colons they hold."""

from llmforge import console


def test_errors_warnings_and_summaries_print_brackets_and_colons_as_written(capsys):
    console.error("docs/[/]: needs `llmforge[vllm]` for web=web:abc:0.3")
    console.warn("[bold] is a file name here")
    console.summary_table("[stats]", {"weights": {"web[0]": "x:smile:"}})
    err = capsys.readouterr().err
    assert "error: docs/[/]: needs `llmforge[vllm]` for web=web:abc:0.3" in err
    assert "warning: [bold] is a file name here" in err
    assert "[stats]" in err and "weights.web[0]" in err and "x:smile:" in err
