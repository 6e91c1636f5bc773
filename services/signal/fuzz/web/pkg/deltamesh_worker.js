export default function init() {}
