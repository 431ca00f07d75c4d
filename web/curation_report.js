// SVD Lab curation: shows the summary the report / curate nodes return and opens their HTML report.
// The nodes return {"ui": {"text": [summary], "svdlab_report": [{filename, subfolder, type}]}}. ComfyUI's
// /view serves .html as a download, so the report is fetched and opened from a blob URL (it is one
// self-contained file: inline SVG and base64 thumbnails, no scripts).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODES = new Set(["SVDLab_CurationReport", "SVDLab_CurateFolder"]);
const MIN_HEIGHT = 220; // px in graph space: about 10 summary lines and the button

function viewUrl(file) {
  const q = new URLSearchParams({ filename: file.filename, subfolder: file.subfolder || "", type: file.type || "output" });
  return api.apiURL(`/view?${q}`);
}

async function openReport(file) {
  const response = await fetch(viewUrl(file));
  if (!response.ok) throw new Error(`report not found (${response.status})`);
  const url = URL.createObjectURL(new Blob([await response.text()], { type: "text/html" }));
  window.open(url, "_blank");
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function showSummary(node, output) {
  const text = (output?.text || []).join("\n");
  const file = (output?.svdlab_report || [])[0];
  if (!node.svdlabBox) {
    // The frontend sizes the widget's wrapper; the summary scrolls inside it and the button stays below.
    const box = document.createElement("div");
    box.style.cssText = "display:flex;flex-direction:column;gap:6px;height:100%;box-sizing:border-box;padding:4px;"
      + "font:12px monospace;color:var(--fg-color)";
    const summary = document.createElement("div");
    summary.style.cssText = "flex:1;min-height:0;overflow:auto;white-space:pre-wrap;overflow-wrap:anywhere";
    const button = document.createElement("button");
    button.textContent = "Open report";
    button.style.cssText = "flex:none;align-self:flex-start";
    box.append(summary, button);
    const widget = node.addDOMWidget("svdlab_report", "svdlab_report", box, { serialize: false, hideOnZoom: false,
      getMinHeight: () => MIN_HEIGHT });
    widget.serialize = false; // keep it out of the saved widgets_values (options.serialize covers the prompt only)
    node.svdlabBox = { summary, button };
  }
  node.svdlabBox.summary.textContent = text || "(no summary)";
  node.svdlabBox.button.disabled = !file;
  node.svdlabBox.button.onclick = () => openReport(file).catch((err) => alert(`SVD Lab: ${err.message}`));
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "svdlab.curationReport",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      showSummary(this, output);
    };
  },
});
